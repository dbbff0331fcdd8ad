// Reading and writing a libp2p yamux stream the way the interop scenarios need:
// exact byte counts, lines, EOF and reset checks, seeded payloads and their digests.
//
// Reads go through the stream's own async iterator (the API libp2p users read with),
// so whatever the package does with a FIN is what the scenarios see.
import { createHash } from 'node:crypto'

export const CHUNK = 256 * 1024
const PATTERN_LEN = (1 << 20) + 7

export class ScenarioError extends Error {}

let pattern = null

/** A seeded xorshift pattern, doubled so that any PATTERN_LEN slice is contiguous. */
export function initPattern (seed) {
  const half = Buffer.alloc(PATTERN_LEN)
  let x = (Number(seed) * 2654435761 + 1) >>> 0 || 1
  for (let i = 0; i < PATTERN_LEN; i++) {
    x ^= x << 13; x >>>= 0
    x ^= x >>> 17
    x ^= x << 5; x >>>= 0
    half[i] = x & 0xff
  }
  pattern = Buffer.concat([half, half])
}

export function payloadChunk (salt, pos, n) {
  const off = (salt * 7919 + pos) % PATTERN_LEN
  return pattern.subarray(off, off + Math.min(n, PATTERN_LEN))
}

export function bigPayload (salt, n) {
  const out = Buffer.alloc(n)
  for (let pos = 0; pos < n;) {
    pos += payloadChunk(salt, pos, n - pos).copy(out, pos)
  }
  return out
}

export const sha256 = () => createHash('sha256')

/** Unfinished transfers, reported on failure (like the Go peer's meters). */
export const meters = new Set()

export function meter (name, expected) {
  const m = { name, expected, seen: 0 }
  meters.add(m)
  return m
}

export function unfinished () {
  return [...meters].filter(m => m.expected >= 0 && m.seen !== m.expected)
    .slice(0, 20).map(m => `${m.name}: seen ${m.seen} of ${m.expected} bytes`)
}

export function isReset (err) {
  return err?.name === 'StreamResetError'
}

/**
 * Queue bytes on a libp2p stream and wait until it has handed all of them to the muxer.
 *
 * Not onDrain(): the package resolves it on any drain of the socket, also while this
 * stream's send window is still exhausted, so a writer looping on it queues without bound.
 */
export async function sendAll (stream, data) {
  stream.send(data)
  while (stream.writeBufferLength > 0) {
    await new Promise((resolve, reject) => {
      const idle = () => { stream.removeEventListener('close', closed); resolve() }
      const closed = evt => {
        stream.removeEventListener('idle', idle)
        reject(evt.error ?? new Error(`stream ${stream.status}`))
      }
      stream.addEventListener('idle', idle, { once: true })
      stream.addEventListener('close', closed, { once: true })
    })
  }
}

/** One yamux stream with buffered reads and awaited writes. */
export class Conn {
  constructor (stream) {
    this.stream = stream
    this.id = stream.streamId
    // Start the iterator now: it listens for the remote FIN ('remoteCloseWrite') only from
    // its first next() on, and one started after the FIN arrived never ends.
    this.iter = stream[Symbol.asyncIterator]()
    this.next = this.pull()
    this.buf = Buffer.alloc(0)
    this.eof = false
  }

  pull () {
    const next = this.iter.next()
    next.catch(() => {}) // a reset nobody reads yet is not an unhandled rejection
    return next
  }

  async fill () {
    if (this.eof) return false
    const { value, done } = await this.next
    if (done) {
      this.eof = true
      return false
    }
    this.next = this.pull()
    const bytes = value.subarray()
    this.buf = this.buf.length ? Buffer.concat([this.buf, bytes]) : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    return true
  }

  /** Up to max bytes; an empty buffer at EOF. Throws the stream's error on a reset. */
  async read (max) {
    while (this.buf.length === 0) {
      if (!await this.fill()) return Buffer.alloc(0)
    }
    const out = this.buf.subarray(0, max)
    this.buf = this.buf.subarray(out.length)
    return out
  }

  async readN (n, digest, m) {
    let got = 0
    try {
      while (got < n) {
        const data = await this.read(n - got)
        if (data.length === 0) throw new ScenarioError(`short read: got ${got} of ${n} bytes, then EOF`)
        digest.update(data)
        got += data.length
        if (m) m.seen = got
      }
    } catch (err) {
      if (err instanceof ScenarioError) throw err
      throw new ScenarioError(`short read: got ${got} of ${n} bytes: ${err.name}: ${err.message}`)
    }
  }

  /** Everything up to EOF: [count, hex digest]. */
  async readAll (m) {
    const digest = sha256()
    try {
      for (;;) {
        const data = await this.read(CHUNK)
        if (data.length === 0) break
        digest.update(data)
        m.seen += data.length
      }
    } catch (err) {
      throw new ScenarioError(`reading to EOF: ${err.name} after ${m.seen} bytes`)
    }
    return [m.seen, digest.digest('hex')]
  }

  async readLine () {
    for (;;) {
      const nl = this.buf.indexOf(10)
      if (nl >= 0) {
        const line = this.buf.subarray(0, nl).toString('latin1')
        this.buf = this.buf.subarray(nl + 1)
        return line
      }
      if (this.buf.length > 256) throw new ScenarioError('line longer than 256 bytes')
      let more
      try {
        more = await this.fill()
      } catch (err) {
        throw new ScenarioError(`reading a line: ${err.name}: ${err.message}`)
      }
      if (!more) throw new ScenarioError(`reading a line: EOF after ${JSON.stringify(this.buf.toString('latin1'))}`)
    }
  }

  async expectLine (want) {
    const got = await this.readLine()
    if (got !== want) throw new ScenarioError(`expected line ${JSON.stringify(want)}, got ${JSON.stringify(got)}`)
  }

  async expectEof () {
    let extra = 0
    try {
      for (;;) {
        const data = await this.read(CHUNK)
        if (data.length === 0) break
        extra += data.length
      }
    } catch (err) {
      throw new ScenarioError(`expected EOF, got ${err.name} after ${extra} extra bytes`)
    }
    if (extra) throw new ScenarioError(`expected EOF, got ${extra} extra bytes first`)
  }

  async write (data) {
    try {
      await sendAll(this.stream, data)
    } catch (err) {
      throw new ScenarioError(`write failed: ${err.name}: ${err.message}`)
    }
  }

  async writeLine (line) {
    await this.write(Buffer.from(line + '\n', 'latin1'))
  }

  async writePayload (n, salt, digest, m) {
    for (let pos = 0; pos < n;) {
      const data = payloadChunk(salt, pos, Math.min(CHUNK, n - pos))
      digest.update(data)
      await this.write(data)
      pos += data.length
      if (m) m.seen = pos
    }
  }

  /** Half-close: FIN once everything queued went out. */
  async closeWrite () {
    await this.stream.close()
  }

  reset () {
    this.stream.abort(new Error('reset by the interop scenario'))
  }

  /** A read must fail with a stream reset (EOF fails); then a write must fail too. */
  async seeReset () {
    let got = 0
    try {
      for (;;) {
        const data = await this.read(CHUNK)
        if (data.length === 0) throw new ScenarioError(`read ended with EOF after ${got} bytes, expected a stream reset`)
        got += data.length
      }
    } catch (err) {
      if (err instanceof ScenarioError) throw err
      if (!isReset(err)) throw new ScenarioError(`read ended with ${err.name}, not a reset`)
    }
    try {
      this.stream.send(Buffer.from('x'))
    } catch {
      return
    }
    throw new ScenarioError('write after the reset succeeded')
  }
}

/** Run promises at once; the first failure is raised at once (the overall deadline ends the rest). */
export async function concurrently (...promises) {
  return await Promise.all(promises)
}

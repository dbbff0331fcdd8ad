// yamux-peer.mjs: the interop scenario peer (interop/SCENARIOS.md) on @chainsafe/libp2p-yamux.
//
// Same command line and output as the Go yamux-peer, so one harness drives both:
//   node yamux-peer.mjs -role client|server -addr HOST:PORT -scenario NAME [-listen] [knobs]
// The yamux client is ACTIVE (opens streams, drives, verifies), the server PASSIVE (obeys the
// command line that starts each stream). Success: "OK <scenario> <role> key=value..." on stdout,
// exit 0; failure: "FAIL ..." lines on stderr, exit 1 (3 on timeout, 2 on usage).
//
// What this peer cannot do (see SCENARIOS.md, "Other yamux families"): goaway (libp2p closes the
// whole session on any Go Away; it has no "no new streams" state) and grants on SYN/ACK (the
// window starts at 256 KiB and grows by itself up to -window).
import net from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import {
  Conn, ScenarioError, bigPayload, concurrently, initPattern, meter, payloadChunk, sha256,
  unfinished
} from './stream-io.mjs'
import { SocketMessageStream } from './socket-stream.mjs'

// Node 20 lacks Promise.withResolvers, which the package calls (ping, drain). Define it before
// the package is imported; the package itself stays untouched.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve, reject
    const promise = new this((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
const { yamux } = await import('@chainsafe/libp2p-yamux')

const SCENARIOS = ['echo', 'parallel', 'bulk', 'halfclose', 'rst', 'ping', 'keepalive',
  'goaway', 'bigwindow', 'openstorm', 'closebusy']
const UNSUPPORTED = { goaway: 'libp2p yamux closes the session on any Go Away' }
const INITIAL_WINDOW = 256 * 1024
const BUSY_LIMIT_MS = 5000
const HANDLER_GRACE_MS = 10000

// --------------------------------------------------------------------------- options

function parseSize (text) {
  const m = /^(\d+)\s*([KMG]?)(I?B)?$/i.exec(String(text).trim())
  if (!m) throw new Error(`bad size ${text}`)
  return Number(m[1]) * { '': 1, K: 1024, M: 1 << 20, G: 1 << 30 }[m[2].toUpperCase()]
}

/** Go durations as the harness passes them ("100000us", "1.5s", "100ms"), in milliseconds. */
function parseDuration (text) {
  const m = /^([\d.]+)(us|µs|ms|s|m)$/.exec(String(text).trim())
  if (!m) throw new Error(`bad duration ${text}`)
  return Number(m[1]) * { us: 1e-3, µs: 1e-3, ms: 1, s: 1000, m: 60000 }[m[2]]
}

function parseOptions (argv) {
  const raw = {}
  for (let i = 0; i < argv.length; i++) {
    const m = /^--?([a-z-]+)(?:=(.*))?$/.exec(argv[i])
    if (!m) throw new Error(`unexpected argument ${argv[i]}`)
    const boolean = m[1] === 'listen' || m[1] === 'yamux-log'
    raw[m[1]] = m[2] ?? (boolean ? 'true' : argv[++i])
  }
  const scenario = raw.scenario
  const o = {
    role: raw.role,
    addr: raw.addr,
    scenario,
    listen: raw.listen === 'true',
    backlog: Number(raw.backlog ?? 256),
    seed: Number(raw.seed ?? 1),
    writeTimeout: parseDuration(raw['write-timeout'] ?? '10s'),
    timeout: parseDuration(raw.timeout ?? '120s'),
    linger: parseDuration(raw.linger ?? '2s'),
    idle: parseDuration(raw.idle ?? '1s'),
    keepalive: raw['keepalive-interval'] !== undefined
      ? parseDuration(raw['keepalive-interval'])
      : (scenario === 'keepalive' ? 100 : 0)
  }
  if (!['client', 'server'].includes(o.role) || !o.addr || !SCENARIOS.includes(scenario)) {
    throw new Error('usage: yamux-peer.mjs -role client|server -addr HOST:PORT -scenario NAME [knobs]')
  }
  const defaults = {
    echo: { size: 1 << 20 },
    parallel: { size: 8 << 20, streams: 100 },
    bulk: { size: 1 << 30 },
    rst: { size: 64 << 10 },
    goaway: { size: 64 << 10 },
    ping: { count: 5 },
    keepalive: { size: 64 << 20 },
    bigwindow: { window: 16 << 20 },
    openstorm: { size: 32, streams: 5 * o.backlog },
    closebusy: { streams: 4 }
  }[scenario] ?? {}
  o.window = raw.window !== undefined ? parseSize(raw.window) : (defaults.window ?? INITIAL_WINDOW)
  o.size = raw.size !== undefined
    ? parseSize(raw.size)
    : (scenario === 'bigwindow' ? o.window - (64 << 10) : (defaults.size ?? 1 << 20))
  o.down = raw.down !== undefined ? parseSize(raw.down) : o.size
  o.streams = Number(raw.streams || defaults.streams || 1)
  o.count = Number(raw.count || defaults.count || 1)
  return o
}

// --------------------------------------------------------------------------- peer

class Peer {
  constructor (o, socket) {
    this.o = o
    this.active = o.role === 'client'
    this.failures = []
    this.details = []
    this.served = new Map()
    this.start = Date.now()
    this.conn = new SocketMessageStream(socket, this.active ? 'outbound' : 'inbound')
    const streams = Math.max(1000, o.streams + 16)
    this.muxer = yamux({
      enableKeepAlive: o.keepalive > 0,
      keepAliveInterval: o.keepalive > 0 ? o.keepalive : 30000,
      maxInboundStreams: streams,
      maxOutboundStreams: streams,
      streamOptions: { maxStreamWindowSize: Math.max(o.window, INITIAL_WINDOW) }
    })().createStreamMuxer(this.conn)
  }

  note (key, value) {
    this.details.push(`${key}=${value}`)
  }

  fail (message) {
    this.failures.push(message)
  }

  async open (cmd) {
    let stream
    try {
      stream = await this.muxer.createStream()
    } catch (err) {
      throw new ScenarioError(`open stream for ${JSON.stringify(cmd ?? '')}: ${err.name}: ${err.message}`)
    }
    const c = new Conn(stream)
    if (cmd) await c.writeLine(cmd)
    return c
  }

  async ping (what) {
    try {
      return await withTimeout(this.muxer.ping(), this.o.writeTimeout, `${what}: no pong`)
    } catch (err) {
      throw new ScenarioError(`${what}: ${err.name}: ${err.message}`)
    }
  }

  /** Lingering close: Go Away, FIN the TCP connection, wait for the peer to close it. */
  async closeSession () {
    await withTimeout(this.muxer.close(), 5000, 'muxer close').catch(() => {})
    this.conn.socket.end()
    await Promise.race([this.conn.ended, sleep(this.o.linger)])
    this.conn.socket.destroy()
  }
}

function withTimeout (promise, ms, what) {
  let timer
  const timeout = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new ScenarioError(`${what} within ${ms} ms`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

// --------------------------------------------------------------------------- active (yamux client)

async function echo (p, n, salt) {
  const c = await p.open(`ECHO ${n}`)
  const tx = sha256()
  const rx = sha256()
  await concurrently(
    c.writePayload(n, salt, tx, meter(`ECHO stream ${c.id} sent`, n)),
    c.readN(n, rx, meter(`ECHO stream ${c.id} echoed back`, n)))
  const [a, b] = [tx.digest('hex'), rx.digest('hex')]
  if (a !== b) throw new ScenarioError(`ECHO stream ${c.id}: echoed bytes differ`)
  await finish(c)
}

async function xfer (p, up, down, salt) {
  const c = await p.open(`XFER ${up} ${down}`)
  const what = `XFER stream ${c.id} (up ${up}, down ${down})`
  const tx = sha256()
  const rx = sha256()
  const [, line] = await concurrently(
    c.writePayload(up, salt, tx, meter(`${what} sent`, up)),
    c.readN(down, rx, meter(`${what} received`, down)).then(() => c.readLine()))
  const want = `${tx.digest('hex')} ${rx.digest('hex')}`
  if (line !== want) throw new ScenarioError(`${what}: digest line ${line}, want ${want}`)
  await finish(c)
}

/** The passive side FINs first: read its EOF, then FIN ours. */
async function finish (c) {
  await c.expectEof()
  await c.closeWrite()
}

async function closer (c, payload, n, salt) {
  const tx = sha256()
  const rx = sha256()
  await c.writePayload(payload, salt, tx, meter(`closer stream ${c.id} sent`, payload))
  await c.closeWrite()
  await c.readN(n, rx, meter(`closer stream ${c.id} received after own FIN`, n))
  const line = await c.readLine()
  const want = `${payload} ${tx.digest('hex')} ${rx.digest('hex')}`
  if (line !== want) throw new ScenarioError(`closer stream ${c.id}: result line ${line}, want ${want}`)
  await c.expectEof()
}

async function drainer (c, n, salt, expectM) {
  const [m, rx] = await c.readAll(meter(`drainer stream ${c.id} received`, -1))
  if (m !== expectM) throw new ScenarioError(`drainer stream ${c.id}: received ${m} bytes before FIN, want ${expectM}`)
  const tx = sha256()
  await c.writePayload(n, salt, tx, meter(`drainer stream ${c.id} sent after the peer's FIN`, n))
  await c.writeLine(`${m} ${rx} ${tx.digest('hex')}`)
  await c.closeWrite()
}

function rng (seed) {
  let x = (seed * 48271) % 2147483647 || 1
  return max => { x = (x * 48271) % 2147483647; return x % (max + 1) }
}

const activeScenarios = {
  async echo (p) { await echo(p, p.o.size, 0) },
  async parallel (p) {
    const next = rng(p.o.seed)
    const jobs = Array.from({ length: p.o.streams }, () => [next(p.o.size), next(p.o.size)])
    const results = await Promise.allSettled(jobs.map(([u, d], i) => xfer(p, u, d, i)))
    const errors = results.filter(r => r.status === 'rejected')
    errors.slice(0, 10).forEach(r => p.fail(`parallel: ${r.reason.message}`))
    if (errors.length) throw new ScenarioError(`${errors.length} of ${jobs.length} XFER streams failed`)
    p.note('streams', jobs.length)
  },
  async bulk (p) { await xfer(p, p.o.size, p.o.down, 0) },
  async halfclose (p) {
    const n = p.o.size
    await closer(await p.open(`HALFCLOSE ${n}`), n, n, 1)
    await drainer(await p.open(`HALFCLOSE-REV ${n}`), n, 2, n)
  },
  async rst (p) {
    let c = await p.open('EXPECT-RST')
    await c.expectLine('READY')
    c.reset()
    c = await p.open('SEND-RST')
    await c.seeReset()
    await echo(p, p.o.size, 3)
  },
  async ping (p) {
    const c = await p.open(`PING ${p.o.count}`)
    let worst = 0
    for (let i = 0; i < p.o.count; i++) worst = Math.max(worst, await p.ping(`ping ${i + 1}`))
    await c.expectLine(`PINGED ${p.o.count}`)
    await finish(c)
    p.note('max_rtt_ms', worst)
  },
  async keepalive (p) {
    await xfer(p, p.o.size, p.o.down, 0)
    await sleep(p.o.idle)
    await echo(p, 1024, 1)
  },
  async bigwindow (p) {
    const n = p.o.size
    const c = await p.open(`BIGWRITE ${n}`)
    await c.expectLine('READY')
    const buf = bigPayload(0, n)
    await c.write(buf) // ONE send call; the package cuts it into window-sized frames
    await c.expectLine(sha256().update(buf).digest('hex'))
    const rx = sha256()
    await c.readN(n, rx, meter(`BIGWRITE stream ${c.id} received`, n))
    await c.expectLine(rx.digest('hex'))
    await finish(c)
  },
  async openstorm (p) {
    // Every open in one TCP write, as a busy client's writes coalesce: the whole storm then
    // arrives in one read, far beyond the passive side's accept backlog.
    p.conn.socket.cork()
    setImmediate(() => p.conn.socket.uncork())
    const results = await Promise.allSettled(
      Array.from({ length: p.o.streams }, (_, i) => echo(p, p.o.size, i)))
    const errors = results.filter(r => r.status === 'rejected')
    errors.slice(0, 10).forEach(r => p.fail(`openstorm: ${r.reason.message}`))
    if (errors.length) throw new ScenarioError(`${errors.length} of ${p.o.streams} streams failed`)
    p.note('streams', p.o.streams)
  },
  async closebusy (p) {
    const kinds = { HOLD: [], FLOOD: [], STALL: [] }
    for (let i = 0; i < p.o.streams; i++) {
      for (const [cmd, list] of Object.entries(kinds)) {
        const c = await p.open(cmd)
        await c.expectLine('READY')
        list.push(c)
      }
    }
    const ended = []
    const hold = c => c.read(1024).then(d => d.length ? 'data' : 'EOF', e => e.name)
    const stall = async c => {
      try {
        for (let pos = 0; ; pos += 65536) await c.write(payloadChunk(5, pos, 65536))
      } catch (err) {
        return 'error'
      }
    }
    const pending = [...kinds.HOLD.map(hold), ...kinds.STALL.map(stall)]
      .map(pr => pr.then(r => { ended.push(Date.now()); return r }))
    kinds.FLOOD.forEach(c => c.stream.pause()) // stop reading: its window must stay exhausted
    await sleep(500)
    const closedAt = Date.now()
    p.conn.socket.destroy() // abrupt, like the Go active (no Go Away)
    const outcomes = await withTimeout(Promise.all(pending), BUSY_LIMIT_MS,
      `${pending.length} pending reads/writes ended`)
    if (outcomes.includes('data')) throw new ScenarioError('a HOLD read returned data')
    p.note('pending_ops_ended', outcomes.length)
    p.note('within_ms', Math.max(...ended) - closedAt)
  }
}

async function runActive (p) {
  const scenario = p.o.scenario
  if (UNSUPPORTED[scenario]) throw new ScenarioError(`not supported: ${UNSUPPORTED[scenario]}`)
  const ctl = scenario === 'closebusy' ? null : await p.open()
  await activeScenarios[scenario](p)
  if (ctl === null) return
  await ctl.writeLine('BYE')
  const verdict = await ctl.readLine()
  if (verdict !== 'BYE OK') throw new ScenarioError(`the passive side reports: ${verdict}`)
  await finish(ctl)
  await p.closeSession()
}

// --------------------------------------------------------------------------- passive (yamux server)

const ARITY = {
  ECHO: 1, XFER: 2, HALFCLOSE: 1, 'HALFCLOSE-REV': 1, 'EXPECT-RST': 0, 'SEND-RST': 0, PING: 1,
  BIGWRITE: 1, HOLD: 0, FLOOD: 0, STALL: 0, BYE: 0
}

class Passive {
  constructor (p) {
    this.p = p
    this.handlers = new Map() // Conn -> its handler's promise
    this.byeSeen = false
    this.checked = false
    this.endAt = null
    this.sessionEnded = p.conn.ended.then(() => { this.endAt = Date.now() })
    this.busyEnds = []
  }

  async run () {
    this.p.muxer.addEventListener('stream', evt => {
      const c = new Conn(evt.detail)
      this.handlers.set(c, this.serve(c).finally(() => this.handlers.delete(c)))
    })
    await this.sessionEnded
    const all = Promise.allSettled([...this.handlers.values()])
    await Promise.race([all, sleep(HANDLER_GRACE_MS)])
    if (this.handlers.size) this.p.fail(`${this.handlers.size} stream handlers still running ${HANDLER_GRACE_MS} ms after the session ended`)
    if (!this.byeSeen && this.p.o.scenario !== 'closebusy') this.p.fail('the session ended without BYE on the control stream')
    if (!this.checked) this.checkServed()
  }

  async serve (c) {
    let what = `stream ${c.id}`
    let cmd
    try {
      const line = await c.readLine()
      what = `${line} stream ${c.id}`
      const [word, ...args] = line.split(' ')
      cmd = word
      if (ARITY[cmd] !== args.length || !args.every(a => /^\d+$/.test(a))) {
        throw new ScenarioError(`unknown or unsupported command line ${JSON.stringify(line)}`)
      }
      await this[cmd](c, ...args.map(Number))
    } catch (err) {
      this.p.fail(`${what}: ${err.message}`)
      c.reset()
      return
    }
    if (cmd !== 'BYE') this.p.served.set(cmd, (this.p.served.get(cmd) ?? 0) + 1)
  }

  async BYE (c) {
    await Promise.allSettled([...this.handlers].filter(([other]) => other !== c).map(([, t]) => t))
    this.checkServed()
    this.byeSeen = this.checked = true
    let verdict = 'BYE OK'
    if (this.p.failures.length) verdict = 'BYE FAIL ' + this.p.failures.join('; ').replace(/\n/g, ' ').slice(0, 200)
    await c.writeLine(verdict)
    await c.closeWrite()
  }

  async ECHO (c, n) {
    const m = meter(`ECHO stream ${c.id} echoed`, n)
    while (m.seen < n) {
      const data = await c.read(n - m.seen)
      if (data.length === 0) throw new ScenarioError(`echoed ${m.seen} of ${n} bytes, then EOF`)
      await c.write(data)
      m.seen += data.length
    }
    await c.closeWrite()
  }

  async XFER (c, up, down) {
    const tx = sha256()
    const rx = sha256()
    await concurrently(
      c.writePayload(down, c.id, tx, meter(`XFER stream ${c.id} sent`, down)),
      c.readN(up, rx, meter(`XFER stream ${c.id} received`, up)))
    await c.writeLine(`${rx.digest('hex')} ${tx.digest('hex')}`)
    await c.closeWrite()
  }

  async HALFCLOSE (c, n) {
    const size = this.p.o.size
    const [m, rx] = await c.readAll(meter(`HALFCLOSE stream ${c.id} received`, -1))
    if (m !== size) throw new ScenarioError(`received ${m} bytes before the peer's FIN, want ${size}`)
    const tx = sha256()
    await c.writePayload(n, c.id, tx, meter(`HALFCLOSE stream ${c.id} sent after FIN`, n))
    await c.writeLine(`${m} ${rx} ${tx.digest('hex')}`)
    await c.closeWrite()
  }

  async 'HALFCLOSE-REV' (c, n) {
    await closer(c, this.p.o.size, n, c.id)
  }

  async 'EXPECT-RST' (c) {
    await c.writeLine('READY')
    await c.seeReset()
  }

  async 'SEND-RST' (c) {
    c.reset()
  }

  async PING (c, k) {
    for (let i = 0; i < k; i++) await this.p.ping(`our ping ${i + 1} of ${k}`)
    await c.writeLine(`PINGED ${k}`)
    await c.closeWrite()
  }

  async BIGWRITE (c, n) {
    await c.writeLine('READY')
    const rx = sha256()
    await c.readN(n, rx, meter(`BIGWRITE stream ${c.id} received`, n))
    await c.writeLine(rx.digest('hex'))
    const buf = bigPayload(c.id, n)
    await c.write(buf) // ONE send call
    await c.writeLine(sha256().update(buf).digest('hex'))
    await c.closeWrite()
  }

  async HOLD (c) {
    await c.writeLine('READY')
    const data = await c.read(1024).catch(() => Buffer.alloc(0))
    this.busyEnds.push(Date.now())
    if (data.length) throw new ScenarioError(`HOLD read returned ${data.length} bytes, want the session's end`)
  }

  async FLOOD (c) {
    await c.writeLine('READY')
    try {
      for (let pos = 0; ; pos += 65536) await c.write(payloadChunk(c.id, pos, 65536))
    } catch {}
    this.busyEnds.push(Date.now())
  }

  async STALL (c) {
    await c.writeLine('READY')
    c.stream.pause() // never read again: no more window updates
    await this.sessionEnded
    this.busyEnds.push(Date.now())
  }

  checkServed () {
    const s = cmd => this.p.served.get(cmd) ?? 0
    const need = (cmd, n, exact = false) => {
      if (s(cmd) < n || (exact && s(cmd) !== n)) this.p.fail(`served ${s(cmd)} ${cmd} streams successfully, want ${n}`)
    }
    const o = this.p.o
    switch (o.scenario) {
      case 'echo': need('ECHO', 1); break
      case 'parallel': need('XFER', o.streams, true); break
      case 'bulk': need('XFER', 1); break
      case 'halfclose': need('HALFCLOSE', 1); need('HALFCLOSE-REV', 1); break
      case 'rst': need('EXPECT-RST', 1); need('SEND-RST', 1); need('ECHO', 1); break
      case 'ping': need('PING', 1); break
      case 'keepalive': need('XFER', 1); need('ECHO', 1); break
      case 'bigwindow': need('BIGWRITE', 1); break
      case 'openstorm': need('ECHO', o.streams, true); break
      case 'closebusy': {
        for (const cmd of ['HOLD', 'FLOOD', 'STALL']) need(cmd, o.streams, true)
        const worst = Math.max(0, ...this.busyEnds.map(t => t - (this.endAt ?? Date.now())))
        if (worst > BUSY_LIMIT_MS) this.p.fail(`busy operations ended up to ${worst} ms after the session ended`)
        this.p.note('busy_ops_ended', this.busyEnds.length)
        break
      }
    }
    this.p.note('served', [...this.p.served].sort().map(([k, v]) => `${k}:${v}`).join(','))
  }
}

// --------------------------------------------------------------------------- main

async function connect (o) {
  const [host, port] = [o.addr.slice(0, o.addr.lastIndexOf(':')), Number(o.addr.slice(o.addr.lastIndexOf(':') + 1))]
  if (o.listen) {
    const server = net.createServer()
    await new Promise(resolve => server.listen(port, host, resolve))
    const a = server.address()
    console.log(`LISTENING ${a.address}:${a.port}`)
    const [socket] = await new Promise(resolve => server.once('connection', (...args) => resolve(args)))
    server.close()
    return socket
  }
  const deadline = Date.now() + 10000
  for (;;) {
    try {
      return await new Promise((resolve, reject) => {
        const s = net.connect(port, host, () => resolve(s))
        s.once('error', reject)
      })
    } catch (err) {
      if (Date.now() > deadline) throw err
      await sleep(50)
    }
  }
}

async function main () {
  let o
  try {
    o = parseOptions(process.argv.slice(2))
  } catch (err) {
    console.error(err.message)
    process.exit(2)
  }
  const failLine = msg => console.error(`FAIL ${o.scenario} ${o.role}: ${msg}`)
  initPattern(o.seed)
  let p = null
  setTimeout(() => {
    failLine(`timeout after ${o.timeout} ms`)
    p?.failures.forEach(failLine)
    unfinished().forEach(m => failLine(`pending ${m}`))
    process.exit(3)
  }, o.timeout).unref()

  p = new Peer(o, await connect(o))
  if (p.active) {
    try {
      await runActive(p)
    } catch (err) {
      p.fail(err instanceof ScenarioError ? err.message : (err.stack ?? String(err)))
      p.conn.socket.destroy()
    }
  } else {
    await new Passive(p).run()
  }
  if (p.failures.length) {
    p.failures.forEach(failLine)
    unfinished().forEach(m => failLine(`unfinished ${m}`))
    process.exit(1)
  }
  const elapsed = ((Date.now() - p.start) / 1000).toFixed(3)
  console.log(`OK ${o.scenario} ${o.role} elapsed=${elapsed}s ${p.details.join(' ')}`.trimEnd())
  process.exit(0)
}

await main()

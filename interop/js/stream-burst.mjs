// stream-burst.mjs: a relay on @chainsafe/libp2p-yamux that opens a burst of streams at the
// registered side it accepts, all in one TCP write (bench/abuse.py's stream-burst attack).
//
//   node stream-burst.mjs -streams N -size BYTES
//
// Listens on 127.0.0.1 (a free port; "listening PORT" on stdout), accepts one registered side
// (a forwarder of the seed protocol), sends it the port line, then runs yamux as the CLIENT:
// N streams opened, written (BYTES each) and half-closed at once, as the JS opener does not
// wait for ACKs. Each stream must come back echoed in full (the forwarder's local service
// echoes). One JSON line on stdout: how many were echoed, reset, or failed otherwise; exit 0.
import net from 'node:net'
import { Conn, bigPayload, initPattern, isReset } from './stream-io.mjs'
import { SocketMessageStream } from './socket-stream.mjs'

if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve, reject
    const promise = new this((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
const { yamux } = await import('@chainsafe/libp2p-yamux')

const PUBLIC_PORT = 40000 // what the port line says: nobody connects to it
const TIMEOUT_MS = 60000

function options (argv) {
  const o = { streams: 1000, size: 600 }
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i].replace(/^--?/, '')
    if (!(name in o) || !/^\d+$/.test(argv[i + 1] ?? '')) {
      console.error('usage: stream-burst.mjs -streams N -size BYTES')
      process.exit(2)
    }
    o[name] = Number(argv[i + 1])
  }
  return o
}

/** Send a payload, half-close, read the echo to EOF: 'echoed', 'reset' or why it failed. */
async function roundTrip (muxer, payload) {
  let conn
  try {
    conn = new Conn(await muxer.createStream())
    conn.stream.send(payload)
    await conn.closeWrite()
    const chunks = []
    for (;;) {
      const data = await conn.read(1 << 16)
      if (data.length === 0) break
      chunks.push(Buffer.from(data))
    }
    return Buffer.concat(chunks).equals(payload) ? 'echoed' : 'echo differs'
  } catch (err) {
    return isReset(err) ? 'reset' : `${err.name}: ${err.message}`
  }
}

async function main () {
  const o = options(process.argv.slice(2))
  initPattern(18)
  const server = net.createServer({ noDelay: true })
  const accepted = new Promise(resolve => server.once('connection', resolve))
  await new Promise(resolve => server.listen(0, '127.0.0.1', resolve))
  console.log(`listening ${server.address().port}`)
  const socket = await accepted
  server.close()
  socket.write(`${PUBLIC_PORT}\n`)
  const conn = new SocketMessageStream(socket, 'outbound') // outbound = the yamux client
  const muxer = yamux({
    enableKeepAlive: false,
    maxInboundStreams: o.streams + 16,
    maxOutboundStreams: o.streams + 16
  })().createStreamMuxer(conn)
  const start = Date.now()
  // Every open, its data and its FIN in one TCP write: the burst arrives in as few reads as
  // the registered side's loop makes, far beyond its accept backlog.
  socket.cork()
  setImmediate(() => socket.uncork())
  const timer = setTimeout(() => { console.log(JSON.stringify({ timeout: true })); process.exit(3) }, TIMEOUT_MS)
  const results = await Promise.all(
    Array.from({ length: o.streams }, (_, i) => roundTrip(muxer, bigPayload(i + 1, o.size))))
  clearTimeout(timer)
  const counts = { streams: o.streams, echoed: 0, reset: 0, failed: 0, ms: Date.now() - start }
  for (const result of results) {
    if (result === 'echoed' || result === 'reset') counts[result] += 1
    else {
      counts.failed += 1
      counts.first_failure ??= result
    }
  }
  console.log(JSON.stringify(counts))
  socket.destroy()
}

main().catch(err => {
  console.error(`stream-burst: ${err.message}`)
  process.exit(1)
})

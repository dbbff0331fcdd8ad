// forwarder.mjs: a relay forwarder on @chainsafe/libp2p-yamux, speaking the relay's seed protocol.
//
//   node forwarder.mjs RELAY_HOST:RELAY_PORT LOCAL_HOST:LOCAL_PORT
//
// Connects to the relay's control port, reads the public port line ("4532\n"), prints
// "RELAY_HOST:PORT" on stdout, then runs yamux as the SERVER on that same connection. Every
// stream the relay opens is piped both ways to a new connection to the local service, with
// half-close in both directions (FIN <-> TCP shutdown). Exits when the relay connection ends.
import net from 'node:net'
import { SocketMessageStream } from './socket-stream.mjs'
import { sendAll } from './stream-io.mjs'

if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve, reject
    const promise = new this((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
const { yamux } = await import('@chainsafe/libp2p-yamux')

function splitAddr (addr) {
  const i = addr.lastIndexOf(':')
  return [addr.slice(0, i), Number(addr.slice(i + 1))]
}

/** Read the seed protocol's port line; return [port, bytes that followed it]. */
function readPortLine (socket) {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0)
    const onData = chunk => {
      buf = Buffer.concat([buf, chunk])
      const nl = buf.indexOf(10)
      if (nl < 0) {
        if (buf.length > 16) fail(new Error(`no port line from the relay: ${JSON.stringify(buf.toString('latin1'))}`))
        return
      }
      socket.off('data', onData).off('end', onEnd).pause()
      const line = buf.subarray(0, nl).toString('latin1')
      if (!/^\d{1,5}$/.test(line)) return fail(new Error(`bad port line ${JSON.stringify(line)}`))
      resolve([Number(line), buf.subarray(nl + 1)])
    }
    const onEnd = () => fail(new Error('the relay closed the connection before the port line'))
    const fail = err => { socket.destroy(); reject(err) }
    socket.on('data', onData).on('end', onEnd).once('error', reject)
  })
}

/** Copy the yamux stream into the socket; the stream's FIN becomes a TCP shutdown. */
async function streamToSocket (stream, socket) {
  for await (const chunk of stream) {
    if (!socket.write(chunk.subarray())) {
      await new Promise(resolve => {
        const done = () => { socket.off('drain', done).off('close', done); resolve() }
        socket.on('drain', done).on('close', done)
      })
    }
  }
  socket.end()
}

/** Copy the socket into the yamux stream; the local EOF becomes a FIN. */
async function socketToStream (socket, stream) {
  for await (const chunk of socket) {
    await sendAll(stream, chunk)
  }
  await stream.close()
}

/**
 * Pipe one relayed stream to a new connection to the local service. Both copies start at
 * once, in the 'stream' event: a libp2p stream's async iterator listens for the remote FIN
 * only from its first next() on, so one started after the FIN arrived (a whole short
 * request can, while the local connect is still under way) never ends. Node queues what
 * is written to the socket (and its end) until it is connected.
 */
function serve (stream, local) {
  const [host, port] = splitAddr(local)
  const socket = net.connect(port, host)
  socket.once('error', err => {
    console.error(`forwarder: local ${local}: ${err.message}`)
    stream.abort(err)
  })
  Promise.all([streamToSocket(stream, socket), socketToStream(socket, stream)]).catch(err => {
    console.error(`forwarder: stream ${stream.id}: ${err.message}`)
    stream.abort(err)
    socket.destroy()
  })
}

async function main () {
  const [relayAddr, local] = process.argv.slice(2)
  if (!relayAddr || !local) {
    console.error('usage: forwarder.mjs RELAY_HOST:RELAY_PORT LOCAL_HOST:LOCAL_PORT')
    process.exit(2)
  }
  const [host, port] = splitAddr(relayAddr)
  const socket = net.connect(port, host)
  await new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject))
  const [publicPort, rest] = await readPortLine(socket)
  const conn = new SocketMessageStream(socket, 'inbound') // inbound = the yamux server
  const muxer = yamux({ enableKeepAlive: false })().createStreamMuxer(conn)
  muxer.addEventListener('stream', evt => serve(evt.detail, local))
  if (rest.length) conn.onData(rest)
  socket.resume()
  console.log(`${host}:${publicPort}`)
  await conn.ended
  console.error('forwarder: the relay connection ended')
}

main().catch(err => {
  console.error(`forwarder: ${err.message}`)
  process.exit(1)
})

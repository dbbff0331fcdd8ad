// A net.Socket as the MessageStream that @chainsafe/libp2p-yamux 8 reads from and writes to.
//
// libp2p 3 muxers no longer take an it-stream {source, sink} duplex: createStreamMuxer()
// wants a MessageStream (events 'message', 'drain', 'close'; send() returning false
// when the transport is full). AbstractMessageStream (@libp2p/utils) does the queueing;
// this class only connects its four hooks to the socket: bytes in -> onData, sendData ->
// socket.write (false = wait for the socket's 'drain'), close -> end + wait, reset ->
// resetAndDestroy. No libp2p transport, security or multistream-select is involved:
// yamux runs directly on the TCP connection, as in the relay's seed protocol.
import { logger } from '@libp2p/logger'
import { AbstractMessageStream } from '@libp2p/utils'

export class SocketMessageStream extends AbstractMessageStream {
  /**
   * @param {import('node:net').Socket} socket
   * @param {'outbound' | 'inbound'} direction outbound = the yamux client
   */
  constructor (socket, direction) {
    super({ log: logger('relay-interop:socket'), direction, inactivityTimeout: 0 })
    this.socket = socket
    this.ended = new Promise(resolve => socket.once('close', resolve))
    socket.setNoDelay(true)
    socket.on('data', buf => this.onData(buf))
    socket.on('drain', () => this.safeDispatchEvent('drain'))
    socket.on('error', err => this.log('socket error %s', err.message))
    socket.on('close', hadError => this.onTransportClosed(hadError ? new Error('socket error') : undefined))
  }

  sendData (data) {
    let canSendMore = true
    for (const chunk of data) {
      canSendMore = this.socket.write(chunk)
    }
    return { sentBytes: data.byteLength, canSendMore }
  }

  sendReset () {
    this.socket.resetAndDestroy()
  }

  sendPause () {
    this.socket.pause()
  }

  sendResume () {
    this.socket.resume()
  }

  /** Half-close the TCP connection once everything queued is written; wait until it closes. */
  async close () {
    if (this.status !== 'open') return
    this.status = 'closing'
    this.socket.end()
    await this.ended
  }
}

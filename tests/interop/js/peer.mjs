// A js-libp2p Kademlia DHT peer for dhtstore's interop tests, driven by JSON lines.
//
// Usage: node peer.mjs '<options JSON>'
//   options: keyType      "Ed25519" | "secp256k1" | "RSA"             (default Ed25519)
//            clientMode   true for a DHT client, false for a server     (default false)
//            protocol     kad protocol id                               (default /ipfs/kad/1.0.0)
//            listen       listen multiaddrs                             (default ["/ip4/127.0.0.1/tcp/0"])
//            permissiveNamespaces  record namespaces ("test" for /test/...) that accept
//                         any value and select the first record, for put/get tests
//            connectionManager  merged into libp2p's connectionManager option; the
//                         harness sets inboundConnectionThreshold to 1000 (js's default
//                         of 5 inbound connections per second and host breaks tests
//                         where every peer dials from 127.0.0.1)
//            security     connection encrypters, in order of preference: "noise", "tls"
//                         (default ["noise"]; ["tls"] makes a peer that speaks only TLS)
//            transports   of "tcp" and "quic" (default ["tcp"]; ["quic"] makes a peer that
//                         speaks only QUIC, with "/ip4/127.0.0.1/udp/0/quic-v1" in listen;
//                         @chainsafe/libp2p-quic is native and needs Node >= 22)
//            sinkProtocol a protocol id to serve as a byte sink (for benchmarks): it reads
//                         to the end of the stream, then answers the byte count as a
//                         big-endian uint64 and closes
//
// stdout, one JSON object per line:
//   first  {"event":"ready","peerId":"12D3…","addrs":["/ip4/…/p2p/…"],"protocols":[…]}
//   then   {"id":N,"ok":true,"result":…} or {"id":N,"ok":false,"error":"…"} for each command,
//          and unsolicited events {"event":"identify"|"connect"|"disconnect",…}
// stdin, one command per line: {"id":N,"cmd":"<name>",…arguments}. See COMMANDS below.
// The process exits when stdin closes or on {"cmd":"stop"}.
import './polyfill.mjs'

import readline from 'node:readline'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { identify } from '@libp2p/identify'
import { kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { peerIdFromString } from '@libp2p/peer-id'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { tls } from '@libp2p/tls'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import { CID } from 'multiformats/cid'
import { fromString as bytesFromString, toString as bytesToString } from 'uint8arrays'

const options = JSON.parse(process.argv[2] ?? '{}')
const keyType = options.keyType ?? 'Ed25519'
const protocol = options.protocol ?? '/ipfs/kad/1.0.0'
const encrypters = { noise, tls }
const security = (options.security ?? ['noise']).map((name) => encrypters[name]())
const transportNames = options.transports ?? ['tcp']
// Imported only when asked for: the QUIC module is native and loads on Node >= 22 only.
const transports = await Promise.all(transportNames.map(async (name) => {
  if (name === 'tcp') return tcp()
  if (name === 'quic') return (await import('@chainsafe/libp2p-quic')).quic()
  throw new Error(`unknown transport ${name}`)
}))

const hex = (bytes) => bytesToString(bytes, 'base16')
const unhex = (text) => bytesFromString(text, 'base16')
const write = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')

const validators = {}
const selectors = {}
for (const ns of options.permissiveNamespaces ?? []) {
  validators[ns] = async () => {}
  selectors[ns] = () => 0
}

const privateKey = keyType === 'RSA' ? await generateKeyPair('RSA', 2048) : await generateKeyPair(keyType)
const node = await createLibp2p({
  privateKey,
  addresses: { listen: options.listen ?? ['/ip4/127.0.0.1/tcp/0'] },
  // Every test peer dials from 127.0.0.1, and js refuses more than 5 inbound
  // connections per second from one host by default: lift that unless told otherwise.
  connectionManager: { inboundConnectionThreshold: 1000, ...(options.connectionManager ?? {}) },
  transports,
  connectionEncrypters: security,
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    ping: ping(),
    dht: kadDHT({
      protocol,
      clientMode: options.clientMode ?? false,
      peerInfoMapper: passthroughMapper, // keep loopback addresses
      validators,
      selectors,
      allowQueryWithZeroPeers: true
    })
  }
})

if (options.sinkProtocol != null) {
  await node.handle(options.sinkProtocol, async (stream) => {
    let total = 0
    for await (const buf of stream) total += buf.byteLength
    const count = new Uint8Array(8)
    new DataView(count.buffer).setBigUint64(0, BigInt(total))
    stream.send(count)
    await stream.close()
  }, { maxInboundStreams: 64 })
}

const dht = node.services.dht
const addrs = () => node.getMultiaddrs().map((ma) => ma.toString())

const peerSummary = (p) => ({ peerId: p.id.toString(), addrs: (p.multiaddrs ?? []).map((ma) => ma.toString()) })

// Runs a DHT query and sums its events up: what the caller needs, plus errors so a
// test can tell a failed query from an empty answer.
async function collect (events) {
  const out = { peers: [], providers: [], values: [], responses: [], errors: [] }
  for await (const ev of events) {
    if (ev.name === 'FINAL_PEER') out.peers.push(peerSummary(ev.peer))
    else if (ev.name === 'PROVIDER') out.providers.push(...ev.providers.map(peerSummary))
    else if (ev.name === 'VALUE') out.values.push({ from: ev.from.toString(), value: hex(ev.value) })
    else if (ev.name === 'PEER_RESPONSE') {
      out.responses.push({
        from: ev.from.toString(),
        messageType: ev.messageName,
        closer: ev.closer.map(peerSummary),
        providers: ev.providers.map(peerSummary)
      })
    } else if (ev.name === 'QUERY_ERROR') out.errors.push({ from: ev.from.toString(), error: String(ev.error?.message ?? ev.error) })
  }
  return out
}

const target = (cmd) => (cmd.addr != null ? multiaddr(cmd.addr) : peerIdFromString(cmd.peerId))
const signal = (cmd) => AbortSignal.timeout(cmd.timeoutMs ?? 20000)

const COMMANDS = {
  // {} -> {peerId, addrs, protocols, mode}
  info: async () => ({ peerId: node.peerId.toString(), addrs: addrs(), protocols: node.getProtocols(), mode: dht.getMode() }),
  // {addr} -> {peerId, remoteAddr}
  dial: async (cmd) => {
    const conn = await node.dial(multiaddr(cmd.addr), { signal: signal(cmd) })
    return { peerId: conn.remotePeer.toString(), remoteAddr: conn.remoteAddr.toString() }
  },
  // {addr | peerId} -> {rttMs}. js allows one outbound ping stream per connection and
  // kad-dht pings new contacts itself, so a clash is retried a few times.
  ping: async (cmd) => {
    for (let attempt = 1; ; attempt++) {
      try {
        return { rttMs: await node.services.ping.ping(target(cmd), { signal: signal(cmd) }) }
      } catch (err) {
        if (attempt >= 5 || err?.name !== 'TooManyOutboundProtocolStreamsError') throw err
        await new Promise((resolve) => setTimeout(resolve, 200))
      }
    }
  },
  // {peerId} -> what identify (and the peer store) learnt of a peer
  peerInfo: async (cmd) => {
    const peer = await node.peerStore.get(peerIdFromString(cmd.peerId))
    const meta = (k) => (peer.metadata.get(k) != null ? bytesToString(peer.metadata.get(k)) : null)
    return {
      protocols: peer.protocols,
      addrs: peer.addresses.map((a) => a.multiaddr.toString()),
      agentVersion: meta('AgentVersion'),
      protocolVersion: meta('ProtocolVersion')
    }
  },
  // {} -> [{peerId, remoteAddr, direction, status}]
  connections: async () => node.getConnections().map((c) => ({
    peerId: c.remotePeer.toString(), remoteAddr: c.remoteAddr.toString(), direction: c.direction, status: c.status
  })),
  // {peerId} -> closes every connection to the peer
  hangUp: async (cmd) => { await node.hangUp(peerIdFromString(cmd.peerId)); return null },
  // {} -> [peerId, ...] in js's routing table
  routingTable: async () => {
    const rt = dht.routingTable
    const ids = []
    for (const bucket of rt.kb?.toIterable?.() ?? []) ids.push(bucket.peerId.toString())
    return ids
  },
  // {mode: "client" | "server"}
  setMode: async (cmd) => { await dht.setMode(cmd.mode); return dht.getMode() },
  // {peerId} -> collect()
  findPeer: async (cmd) => collect(dht.findPeer(peerIdFromString(cmd.peerId), { signal: signal(cmd) })),
  // {key (hex)} -> collect()
  getClosestPeers: async (cmd) => collect(dht.getClosestPeers(unhex(cmd.key), { signal: signal(cmd) })),
  // {cid} -> collect()
  provide: async (cmd) => collect(dht.provide(CID.parse(cmd.cid), { signal: signal(cmd) })),
  // {cid} -> collect()
  findProviders: async (cmd) => collect(dht.findProviders(CID.parse(cmd.cid), { signal: signal(cmd) })),
  // {key (hex), value (hex)} -> collect()
  put: async (cmd) => collect(dht.put(unhex(cmd.key), unhex(cmd.value), { signal: signal(cmd) })),
  // {key (hex)} -> collect()
  get: async (cmd) => collect(dht.get(unhex(cmd.key), { signal: signal(cmd) })),
  stop: async () => { setImmediate(shutdown); return null }
}

node.addEventListener('peer:identify', (evt) => {
  const d = evt.detail
  write({
    event: 'identify',
    peerId: d.peerId.toString(),
    protocols: d.protocols,
    addrs: d.listenAddrs.map((ma) => ma.toString()),
    agentVersion: d.agentVersion ?? null
  })
})
node.addEventListener('peer:connect', (evt) => write({ event: 'connect', peerId: evt.detail.toString() }))
node.addEventListener('peer:disconnect', (evt) => write({ event: 'disconnect', peerId: evt.detail.toString() }))

let stopping = false
async function shutdown () {
  if (stopping) return
  stopping = true
  try { await node.stop() } finally { process.exit(0) }
}
process.on('SIGTERM', shutdown)

write({ event: 'ready', peerId: node.peerId.toString(), addrs: addrs(), protocols: node.getProtocols(), keyType })

const rl = readline.createInterface({ input: process.stdin })
rl.on('line', async (line) => {
  let cmd
  try { cmd = JSON.parse(line) } catch { write({ ok: false, error: 'bad JSON' }); return }
  const handler = COMMANDS[cmd.cmd]
  if (handler == null) { write({ id: cmd.id, ok: false, error: `unknown command ${cmd.cmd}` }); return }
  try {
    write({ id: cmd.id, ok: true, result: await handler(cmd) })
  } catch (err) {
    write({ id: cmd.id, ok: false, error: String(err?.message ?? err) })
  }
})
rl.on('close', shutdown)

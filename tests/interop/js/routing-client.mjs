// One call of @helia/delegated-routing-v1-http-api-client against a Delegated Routing V1
// HTTP API server, for dhtstore's interop tests.
//
// Usage: node routing-client.mjs '<request JSON>'
//   {"url": "http://127.0.0.1:PORT", "op": "providers", "cid": "bafy…"}
//   {"url": …, "op": "peers", "peerId": "12D3…"}
//   {"url": …, "op": "getIPNS", "name": "<libp2p-key CID>"}
//   {"url": …, "op": "putIPNS", "name": "<libp2p-key CID>", "recordHex": "…"}
// stdout, one JSON object: {"ok": true, "result": …} or {"ok": false, "error": "<name>: <message>"}.
// providers and peers answer [{"ID", "Addrs", "Protocols"}] (ID as the client parsed
// it: a libp2p-key CID string), getIPNS the record bytes as hex, putIPNS null.
import './polyfill.mjs'

import { delegatedRoutingV1HttpApiClient } from '@helia/delegated-routing-v1-http-api-client'
import { defaultLogger } from '@libp2p/logger'
import { peerIdFromString } from '@libp2p/peer-id'
import { CID } from 'multiformats/cid'
import { fromString as bytesFromString, toString as bytesToString } from 'uint8arrays'

const request = JSON.parse(process.argv[2])
const client = delegatedRoutingV1HttpApiClient({ url: request.url, cacheTTL: 0, timeout: 30000 })({ logger: defaultLogger() })
await client.start()

const peers = async (iterable) => {
  const out = []
  for await (const peer of iterable) {
    out.push({ ID: peer.ID.toString(), Addrs: peer.Addrs.map((a) => a.toString()), Protocols: peer.Protocols })
  }
  return out
}

try {
  let result = null
  if (request.op === 'providers') {
    result = await peers(client.getProviders(CID.parse(request.cid)))
  } else if (request.op === 'peers') {
    result = await peers(client.getPeers(peerIdFromString(request.peerId)))
  } else if (request.op === 'getIPNS') {
    result = bytesToString(await client.getIPNS(CID.parse(request.name)), 'base16')
  } else if (request.op === 'putIPNS') {
    await client.putIPNS(CID.parse(request.name), bytesFromString(request.recordHex, 'base16'))
  } else {
    throw new Error(`unknown op ${request.op}`)
  }
  process.stdout.write(JSON.stringify({ ok: true, result }) + '\n')
} catch (err) {
  process.stdout.write(JSON.stringify({ ok: false, error: `${err.name}: ${err.message}` }) + '\n')
} finally {
  await client.stop()
}

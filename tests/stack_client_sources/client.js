// Fetches one URL with Node's https module and prints the response body.
//
// Usage: node client.js URL [PROXY_URL]. Trust: NODE_EXTRA_CA_CERTS. Node's https does not
// read proxy variables, so with PROXY_URL the tunnel is opened here, as applications do: an
// HTTP CONNECT to the proxy, then TLS over that socket with the same options as direct.
'use strict';
const http = require('http');
const https = require('https');
const tls = require('tls');

const [url, proxy] = process.argv.slice(2);
const target = new URL(url);
const port = Number(target.port || 443);

function fail(message) {
  process.stderr.write(`${message}\n`);
  process.exit(1);
}

function get(tunnel) {
  const connect = () => tls.connect({
    host: target.hostname, port, servername: target.hostname, ...(tunnel ? { socket: tunnel } : {}),
  });
  const request = https.request(target, { createConnection: connect }, (response) => {
    const chunks = [];
    response.on('data', (chunk) => chunks.push(chunk));
    response.on('end', () => {
      const body = Buffer.concat(chunks);
      if (response.statusCode !== 200) fail(`${response.statusCode}: ${body}`);
      process.stdout.write(body);
    });
  });
  request.on('error', (error) => fail(error.message));
  request.end();
}

if (!proxy) {
  get(null);
} else {
  const via = new URL(proxy);
  http.request({ host: via.hostname, port: Number(via.port), method: 'CONNECT',
                 path: `${target.hostname}:${port}` })
    .on('connect', (response, socket) => {
      if (response.statusCode !== 200) fail(`CONNECT answered ${response.statusCode}`);
      get(socket);
    })
    .on('error', (error) => fail(`proxy: ${error.message}`))
    .end();
}

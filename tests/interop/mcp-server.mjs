#!/usr/bin/env node
// Interop fixture for nodeward: an MCP server built with the official SDK
// (`@modelcontextprotocol/sdk`), Streamable HTTP at /mcp, stateless, with one
// tool. It trusts nodeward in front of it for authorization: it reads the
// identity nodeward adds (x-nodeward-sub, x-nodeward-iss, x-client-id) and
// never sees a token.
//
// Usage: node mcp-server.mjs [PORT]          (0 or nothing = a free port)
// Env:   SEEN_FILE  append one JSON line per request received:
//                   {"method","url","headers"} (every header, as received)
//
// stdout carries exactly one line: "mcp-server ready http://127.0.0.1:PORT/mcp".

import * as http from 'node:http';
import * as fs from 'node:fs';

console.info = (...args) => console.error(...args);
console.log = (...args) => console.error(...args);

const { McpServer } = await import('@modelcontextprotocol/sdk/server/mcp.js');
const { StreamableHTTPServerTransport } = await import('@modelcontextprotocol/sdk/server/streamableHttp.js');

const portArg = process.argv[2] ?? process.env.PORT ?? '0';
const port = Number.parseInt(portArg, 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`invalid port: ${portArg}`);
  process.exit(2);
}
const seenFile = process.env.SEEN_FILE;

// One server per request (stateless Streamable HTTP): the tool answers with
// the identity of the request that called it.
function toolServer(headers) {
  const server = new McpServer({ name: 'nodeward-tools', version: '1.0.0' });
  server.registerTool(
    'whoami',
    { description: 'The caller, as nodeward identified it (x-nodeward-* headers)' },
    async () => ({
      content: [
        {
          type: 'text',
          text: JSON.stringify({
            sub: headers['x-nodeward-sub'] ?? null,
            iss: headers['x-nodeward-iss'] ?? null,
            client_id: headers['x-client-id'] ?? null,
            authorization: headers.authorization ?? null,
          }),
        },
      ],
    }),
  );
  return server;
}

const httpServer = http.createServer(async (req, res) => {
  if (seenFile) {
    fs.appendFileSync(seenFile, `${JSON.stringify({ method: req.method, url: req.url, headers: req.headers })}\n`);
  }
  const path = new URL(req.url, 'http://localhost').pathname;
  if (path !== '/mcp') {
    res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":"not_found"}');
    return;
  }
  if (req.method !== 'POST') {
    // Stateless: no standalone SSE stream and no session to delete.
    res
      .writeHead(405, { allow: 'POST', 'content-type': 'application/json' })
      .end('{"jsonrpc":"2.0","error":{"code":-32000,"message":"Method not allowed."},"id":null}');
    return;
  }
  const server = toolServer(req.headers);
  const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
  res.on('close', () => {
    transport.close();
    server.close();
  });
  try {
    await server.connect(transport);
    await transport.handleRequest(req, res);
  } catch (err) {
    console.error('mcp-server: request failed', err);
    if (!res.headersSent) res.writeHead(500).end();
  }
});

await new Promise((resolve, reject) => {
  httpServer.once('error', reject);
  httpServer.listen(port, '127.0.0.1', resolve);
});
process.stdout.write(`mcp-server ready http://127.0.0.1:${httpServer.address().port}/mcp\n`);

function shutdown() {
  httpServer.close(() => process.exit(0));
  httpServer.closeAllConnections?.();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

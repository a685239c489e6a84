#!/usr/bin/env node
// Interop fixture for nodeward: an AI agent built with the official MCP SDK
// (`@modelcontextprotocol/sdk`). It connects to an MCP server knowing only its
// URL and its own client credentials: the SDK gets the 401, follows the
// challenge's `resource_metadata` to the protected resource metadata (RFC
// 9728), discovers the authorization server, gets a client-credentials token
// for the resource (RFC 8707 `resource`), and calls the tool `whoami`.
//
// Usage: node mcp-client.mjs MCP_URL ISSUER
// Env:   CLIENT_ID, CLIENT_SECRET (default nodeward-agent / nodeward-agent-secret),
//        SCOPE (default "tools.read tools.call")
//
// stdout: one JSON line {"tools", "result", "trace", "token"}: the tools listed,
// the tool's result, every HTTP exchange the SDK made ({method, url, status,
// www_authenticate}), and the access token's claims (decoded, not verified;
// the token itself is never printed). Errors go to stderr, exit status 1.

console.info = (...args) => console.error(...args);
console.log = (...args) => console.error(...args);

const { Client } = await import('@modelcontextprotocol/sdk/client/index.js');
const { StreamableHTTPClientTransport } = await import('@modelcontextprotocol/sdk/client/streamableHttp.js');
const { ClientCredentialsProvider } = await import('@modelcontextprotocol/sdk/client/auth-extensions.js');

const [mcpUrl, issuer] = process.argv.slice(2);
if (!mcpUrl || !issuer) {
  console.error('usage: node mcp-client.mjs MCP_URL ISSUER');
  process.exit(2);
}

const trace = [];
async function tracedFetch(url, init) {
  const res = await fetch(url, init);
  trace.push({
    method: init?.method ?? 'GET',
    url: String(url),
    status: res.status,
    www_authenticate: res.headers.get('www-authenticate'),
  });
  return res;
}

const provider = new ClientCredentialsProvider({
  clientId: process.env.CLIENT_ID || 'nodeward-agent',
  clientSecret: process.env.CLIENT_SECRET || 'nodeward-agent-secret',
  scope: process.env.SCOPE || 'tools.read tools.call',
  expectedIssuer: issuer,
});
const transport = new StreamableHTTPClientTransport(new URL(mcpUrl), { authProvider: provider, fetch: tracedFetch });
const client = new Client({ name: 'nodeward-interop-agent', version: '1.0.0' });

try {
  await client.connect(transport);
  const tools = (await client.listTools()).tools.map((t) => t.name);
  const result = await client.callTool({ name: 'whoami', arguments: {} });
  await client.close();
  const token = provider.tokens()?.access_token;
  const claims = token ? JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString('utf8')) : null;
  process.stdout.write(`${JSON.stringify({ tools, result, trace, token: claims })}\n`);
} catch (err) {
  console.error(`mcp-client: ${err?.stack ?? err}`);
  console.error(`mcp-client: HTTP exchanges so far: ${JSON.stringify(trace)}`);
  process.exit(1);
}

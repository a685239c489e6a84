#!/usr/bin/env node
// Interop fixture for nodeward: a real, certified OpenID provider (panva's
// `oidc-provider`) that issues client-credentials JWT access tokens.
//
// Usage: node oidc-provider.mjs [PORT]      (or PORT=... node oidc-provider.mjs)
// Env:   PORT      listen port on 127.0.0.1 (argv[2] wins; default 0 = ephemeral)
//        JWKS_FILE private JWKS file (default $TMPDIR/nodeward-oidc-provider-jwks.json);
//                  created with a fresh RS256 key if missing. Tests should pass their own.
//        ROTATE=1  prepend a NEW RS256 key (becomes the signing key), keep the old ones
//        MCP_RESOURCES  comma-separated resource URIs (RFC 8707) of MCP servers: a
//                  token requested with `resource=<one of them>` is a JWT whose `aud`
//                  is that URI, with scopes from MCP_SCOPES; the client
//                  `nodeward-agent` (secret `nodeward-agent-secret`, client
//                  credentials) may ask for them
//        MCP_SCOPES space-separated scopes of those resources (default "tools.read tools.call")
//        SUBJECT_JWKS  a JWKS URL (the Kubernetes service-account issuer's): turns on an RFC 8693
//                  token exchange for the client `nodeward-exchange` (secret
//                  `nodeward-exchange-secret`): a subject_token (and optional actor_token) of that
//                  issuer with this provider's issuer as audience becomes a JWT access token for
//                  `resource`, `sub` the subject's, `act: {sub}` the actor's (RFC 8693 §4.1)
//
// stdout carries exactly one line: "oidc-provider ready http://127.0.0.1:PORT".
// Everything else (oidc-provider notices/warnings, errors) goes to stderr.

import * as http from 'node:http';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as crypto from 'node:crypto';
import * as os from 'node:os';

// oidc-provider prints "NOTICE" lines through console.info (stdout). Keep stdout
// reserved for the ready line by routing console.info/log to stderr.
console.info = (...args) => console.error(...args);
console.log = (...args) => console.error(...args);

const { generateKeyPair, exportJWK } = await import('jose');
const { default: Provider, errors } = await import('oidc-provider');

const portArg = process.argv[2] ?? process.env.PORT ?? '0';
const port = Number.parseInt(portArg, 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`invalid port: ${portArg}`);
  process.exit(2);
}
const jwksFile = path.resolve(process.env.JWKS_FILE || path.join(os.tmpdir(), 'nodeward-oidc-provider-jwks.json'));
const rotate = process.env.ROTATE === '1';

const CLIENT_ID = 'nodeward-test';
const CLIENT_SECRET = 'nodeward-test-secret';
const RESOURCE = 'urn:nodeward:orders';
const SCOPE = 'orders:read';
const AGENT_ID = 'nodeward-agent';
const AGENT_SECRET = 'nodeward-agent-secret';
const MCP_SCOPES = (process.env.MCP_SCOPES || 'tools.read tools.call').split(' ').filter(Boolean);
const MCP_RESOURCES = (process.env.MCP_RESOURCES || '').split(',').filter(Boolean);
const EXCHANGE_ID = 'nodeward-exchange';
const EXCHANGE_SECRET = 'nodeward-exchange-secret';
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const JWT_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const SUBJECT_JWKS = process.env.SUBJECT_JWKS || '';

async function newRsaKey() {
  const { privateKey } = await generateKeyPair('RS256', { extractable: true, modulusLength: 2048 });
  const jwk = await exportJWK(privateKey);
  return { ...jwk, kid: `rs256-${crypto.randomUUID()}`, alg: 'RS256', use: 'sig' };
}

async function loadKeys() {
  let keys = [];
  let dirty = false;
  if (fs.existsSync(jwksFile)) {
    const parsed = JSON.parse(fs.readFileSync(jwksFile, 'utf8'));
    keys = Array.isArray(parsed.keys) ? parsed.keys : [];
  }
  if (!keys.some((k) => k.kty === 'RSA')) {
    keys.push(await newRsaKey());
    dirty = true;
  }
  if (rotate) {
    keys.unshift(await newRsaKey()); // oidc-provider signs with the FIRST matching key
    dirty = true;
  }
  if (dirty) {
    fs.mkdirSync(path.dirname(jwksFile), { recursive: true });
    const tmp = `${jwksFile}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, `${JSON.stringify({ keys }, null, 2)}\n`, { mode: 0o600 });
    fs.renameSync(tmp, jwksFile);
  }
  return keys;
}

const keys = await loadKeys();

// Bind first so an ephemeral port (0) is known before building the issuer.
const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, '127.0.0.1', resolve);
});
const actualPort = server.address().port;
const issuer = `http://127.0.0.1:${actualPort}`;

const resourceServers = {
  [RESOURCE]: {
    audience: RESOURCE,
    scope: SCOPE,
    accessTokenFormat: 'jwt',
    accessTokenTTL: 300,
    jwt: { sign: { alg: 'RS256' } },
  },
};
// Each MCP server is its own resource: the token's audience is exactly the
// resource indicator the client sent (RFC 8707), so a token for one MCP
// server is refused by another.
for (const resource of MCP_RESOURCES) {
  resourceServers[resource] = {
    audience: resource,
    scope: MCP_SCOPES.join(' '),
    accessTokenFormat: 'jwt',
    accessTokenTTL: 300,
    jwt: { sign: { alg: 'RS256' } },
  };
}

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: CLIENT_ID,
      client_secret: CLIENT_SECRET,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: SCOPE,
    },
    {
      // An AI agent's client, as the MCP SDK's ClientCredentialsProvider uses it.
      client_id: AGENT_ID,
      client_secret: AGENT_SECRET,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: MCP_SCOPES.join(' '),
    },
    ...(SUBJECT_JWKS ? [{
      // A node agent exchanging pods' service-account tokens (RFC 8693).
      client_id: EXCHANGE_ID,
      client_secret: EXCHANGE_SECRET,
      grant_types: [TOKEN_EXCHANGE],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: SCOPE,
    }] : []),
  ],
  jwks: { keys },
  scopes: ['openid', SCOPE, ...MCP_SCOPES],
  cookies: { keys: ['nodeward-interop-cookie-key-not-secret'] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // No resource parameter -> no resource server -> opaque token. Keep it that way.
      defaultResource: async (_ctx, _client, oneOf) => oneOf,
      useGrantedResource: async () => false,
      getResourceServerInfo: async (_ctx, resourceIndicator) => {
        const info = resourceServers[resourceIndicator];
        if (!info) throw new errors.InvalidTarget();
        return info;
      },
    },
  },
  extraTokenClaims: async (ctx, token) => {
    // The token exchange's actor (set by its grant handler below).
    if (token.gty === 'token_exchange') {
      return ctx.nodewardActor ? { act: ctx.nodewardActor } : undefined;
    }
    if (token.kind === 'ClientCredentials' && token.clientId === CLIENT_ID) {
      return { groups: ['admins'], email: 'nodeward-test@example.com' };
    }
    return undefined;
  },
  ttl: {
    AccessToken: 300,
    ClientCredentials: 300,
    Grant: 600,
    Session: 600,
    Interaction: 600,
    IdToken: 300,
  },
  clientBasedCORS: () => false,
  renderError: (ctx, out) => {
    ctx.type = 'application/json';
    ctx.body = out;
  },
});
provider.proxy = false;

if (SUBJECT_JWKS) {
  const { createRemoteJWKSet, jwtVerify } = await import('jose');
  const subjectKeys = createRemoteJWKSet(new URL(SUBJECT_JWKS));
  // Verified against the service-account issuer's keys, for this provider.
  const verify = async (token, what) => {
    try {
      return (await jwtVerify(token, subjectKeys, { audience: issuer })).payload;
    } catch (e) {
      throw new errors.InvalidGrant(`${what}: ${e.message}`);
    }
  };
  provider.registerGrantType(TOKEN_EXCHANGE, async (ctx) => {
    const p = ctx.oidc.params;
    if (ctx.oidc.client.clientId !== EXCHANGE_ID) throw new errors.UnauthorizedClient();
    if (p.subject_token_type !== JWT_TYPE) throw new errors.InvalidRequest('subject_token_type must be jwt');
    if (p.requested_token_type && p.requested_token_type !== ACCESS_TOKEN_TYPE) {
      throw new errors.InvalidRequest('only access tokens are issued');
    }
    const subject = await verify(p.subject_token, 'subject_token');
    let act;
    if (p.actor_token) {
      if (p.actor_token_type !== JWT_TYPE) throw new errors.InvalidRequest('actor_token_type must be jwt');
      act = { sub: (await verify(p.actor_token, 'actor_token')).sub };
    }
    const info = resourceServers[p.resource];
    if (!info) throw new errors.InvalidTarget();
    const token = new provider.AccessToken({
      accountId: subject.sub,
      client: ctx.oidc.client,
      grantId: `exchange-${crypto.randomUUID()}`,
      gty: 'token_exchange',
      scope: p.scope || undefined,
    });
    token.resourceServer = new provider.ResourceServer(p.resource, info);
    ctx.nodewardActor = act;
    const value = await token.save();
    ctx.body = {
      access_token: value,
      issued_token_type: ACCESS_TOKEN_TYPE,
      token_type: 'Bearer',
      expires_in: token.expiration,
    };
  }, ['subject_token', 'subject_token_type', 'actor_token', 'actor_token_type', 'requested_token_type', 'audience', 'resource', 'scope']);
}
provider.on('server_error', (_ctx, err) => console.error('server_error', err));

server.on('request', provider.callback());
process.stdout.write(`oidc-provider ready ${issuer}\n`);

let stopping = false;
function shutdown(signal) {
  if (stopping) return;
  stopping = true;
  console.error(`oidc-provider: ${signal}, shutting down`);
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

// Bearer token and TLS for the channel, from options or ENDCALL_SIDECAR_* variables. Files are
// read once, when the client is made, so a wrong path fails at start-up naming the option (and
// variable) and the path, not on the first call of a live conversation.
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';

export interface SecurityOptions {
  /** Sent as `authorization: Bearer <token>` on every call. Default: env `ENDCALL_SIDECAR_TOKEN`. */
  token?: string;
  /** File holding the token (trailing newline ignored). Default: env `ENDCALL_SIDECAR_TOKEN_FILE`. */
  tokenFile?: string;
  /** PEM CA bundle to trust; turns TLS on. Default: env `ENDCALL_SIDECAR_TLS_CA`. */
  tlsCa?: string;
  /** PEM client certificate for mutual TLS (with `tlsKey`). Default: env `ENDCALL_SIDECAR_TLS_CERT`. */
  tlsCert?: string;
  /** PEM private key of `tlsCert`. Default: env `ENDCALL_SIDECAR_TLS_KEY`. */
  tlsKey?: string;
  /** Name the server's certificate must carry, if not the address's host. Default: env `ENDCALL_SIDECAR_TLS_SERVER_NAME`. */
  tlsServerName?: string;
}

export interface ResolvedSecurity {
  /** The `authorization` value, or undefined when no token is configured. */
  authorization?: string;
  credentials: grpc.ChannelCredentials;
  channelOptions: grpc.ChannelOptions;
}

type Env = Record<string, string | undefined>;

function read(what: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    const reason = (err as NodeJS.ErrnoException).code ?? String(err);
    throw new Error(`${what} ${path}: cannot read (${reason})`);
  }
}

export function resolveSecurity(options: SecurityOptions, env: Env = process.env): ResolvedSecurity {
  let { token, tokenFile } = options;
  if (token === undefined && tokenFile === undefined) {
    token = env.ENDCALL_SIDECAR_TOKEN || undefined;
    tokenFile = env.ENDCALL_SIDECAR_TOKEN_FILE || undefined;
  }
  if (token !== undefined && tokenFile !== undefined) {
    throw new Error('token and tokenFile (ENDCALL_SIDECAR_TOKEN and ENDCALL_SIDECAR_TOKEN_FILE): give one, not both');
  }
  if (tokenFile !== undefined) {
    token = read('tokenFile (ENDCALL_SIDECAR_TOKEN_FILE)', tokenFile).toString('utf8').replace(/\r?\n$/, '');
    if (!token) throw new Error(`tokenFile (ENDCALL_SIDECAR_TOKEN_FILE) ${tokenFile}: empty`);
  } else if (token !== undefined && !token) {
    throw new Error('token (ENDCALL_SIDECAR_TOKEN): empty');
  }

  const tlsCa = options.tlsCa ?? (env.ENDCALL_SIDECAR_TLS_CA || undefined);
  const tlsCert = options.tlsCert ?? (env.ENDCALL_SIDECAR_TLS_CERT || undefined);
  const tlsKey = options.tlsKey ?? (env.ENDCALL_SIDECAR_TLS_KEY || undefined);
  const tlsServerName = options.tlsServerName ?? (env.ENDCALL_SIDECAR_TLS_SERVER_NAME || undefined);
  if ((tlsCert === undefined) !== (tlsKey === undefined)) {
    const missing = tlsKey === undefined ? 'tlsKey' : 'tlsCert';
    throw new Error(`tlsCert and tlsKey (ENDCALL_SIDECAR_TLS_CERT, ENDCALL_SIDECAR_TLS_KEY) go together: ${missing} is missing`);
  }
  if (tlsCert !== undefined && tlsCa === undefined) {
    throw new Error('tlsCert (ENDCALL_SIDECAR_TLS_CERT) needs tlsCa (ENDCALL_SIDECAR_TLS_CA): TLS is off without it');
  }
  const channelOptions: grpc.ChannelOptions = {};
  let credentials = grpc.credentials.createInsecure();
  if (tlsCa !== undefined) {
    credentials = grpc.credentials.createSsl(
      read('tlsCa (ENDCALL_SIDECAR_TLS_CA)', tlsCa),
      tlsKey === undefined ? null : read('tlsKey (ENDCALL_SIDECAR_TLS_KEY)', tlsKey),
      tlsCert === undefined ? null : read('tlsCert (ENDCALL_SIDECAR_TLS_CERT)', tlsCert),
    );
    if (tlsServerName !== undefined) {
      channelOptions['grpc.ssl_target_name_override'] = tlsServerName;
      channelOptions['grpc.default_authority'] = tlsServerName;
    }
  }
  return { authorization: token === undefined ? undefined : `Bearer ${token}`, credentials, channelOptions };
}

/** Adds `authorization` to every call's metadata, streams included. */
export function bearerInterceptor(authorization: string): grpc.Interceptor {
  return (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set('authorization', authorization);
        next(metadata, listener);
      },
    });
}

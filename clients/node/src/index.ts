export {
  EndCallClient,
  DEFAULT_ADDRESS,
  durationFromMs,
  msFromDuration,
  isSidecarError,
  isUnreachable,
  type EndCallClientOptions,
  type SidecarError,
} from './client.js';
export { resolveSecurity, bearerInterceptor, type SecurityOptions, type ResolvedSecurity } from './security.js';
export { SessionWatcher, type SessionWatcherOptions, type ReconnectInfo, type WatchEnd } from './watcher.js';
export { SidecarSession, type SidecarSessionOptions, type SpeechDoneInfo } from './session.js';
export { loadApi, protoDir } from './proto.js';
export * from './types.js';
export { status as GrpcStatus } from '@grpc/grpc-js';

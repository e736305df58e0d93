// Re-exports of the types generated from proto/endcall/v1/endcall.proto. `Foo` is what a request
// accepts; `Foo__Output` is what a reply carries (defaults filled in, enums as their names,
// uint64 as number).
export type { CloseReason, CloseReason__Output } from './gen/endcall/v1/CloseReason.js';
export { CloseReason as CloseReasons } from './gen/endcall/v1/CloseReason.js';
export type { Directive, Directive__Output } from './gen/endcall/v1/Directive.js';
export type { DirectiveKind, DirectiveKind__Output } from './gen/endcall/v1/DirectiveKind.js';
export { DirectiveKind as DirectiveKinds } from './gen/endcall/v1/DirectiveKind.js';
export type { EndCallRequest, EndCallRequest__Output } from './gen/endcall/v1/EndCallRequest.js';
export type { EndCallResponse, EndCallResponse__Output } from './gen/endcall/v1/EndCallResponse.js';
export type { EndInstructions, EndInstructions__Output } from './gen/endcall/v1/EndInstructions.js';
export type { GetSessionRequest } from './gen/endcall/v1/GetSessionRequest.js';
export type { GetToolRequest } from './gen/endcall/v1/GetToolRequest.js';
export type { ModelCapabilities, ModelCapabilities__Output } from './gen/endcall/v1/ModelCapabilities.js';
export type { OnSessionCloseRequest } from './gen/endcall/v1/OnSessionCloseRequest.js';
export type { OnSessionCloseResponse, OnSessionCloseResponse__Output } from './gen/endcall/v1/OnSessionCloseResponse.js';
export type { OnSpeechCreatedRequest } from './gen/endcall/v1/OnSpeechCreatedRequest.js';
export type { OnSpeechCreatedResponse, OnSpeechCreatedResponse__Output } from './gen/endcall/v1/OnSpeechCreatedResponse.js';
export type { OnSpeechDoneRequest } from './gen/endcall/v1/OnSpeechDoneRequest.js';
export type { OnSpeechDoneResponse, OnSpeechDoneResponse__Output } from './gen/endcall/v1/OnSpeechDoneResponse.js';
export type { OpenSessionRequest } from './gen/endcall/v1/OpenSessionRequest.js';
export type { OpenSessionResponse__Output } from './gen/endcall/v1/OpenSessionResponse.js';
export type { Outcome, Outcome__Output } from './gen/endcall/v1/Outcome.js';
export { Outcome as Outcomes } from './gen/endcall/v1/Outcome.js';
export type { ResolvedOptions__Output } from './gen/endcall/v1/ResolvedOptions.js';
export type { SessionOptions } from './gen/endcall/v1/SessionOptions.js';
export type { SessionReport__Output } from './gen/endcall/v1/SessionReport.js';
export type { SessionState, SessionState__Output } from './gen/endcall/v1/SessionState.js';
export { SessionState as SessionStates } from './gen/endcall/v1/SessionState.js';
export type { ShutdownCause, ShutdownCause__Output } from './gen/endcall/v1/ShutdownCause.js';
export { ShutdownCause as ShutdownCauses } from './gen/endcall/v1/ShutdownCause.js';
export type { TimelineEntry__Output } from './gen/endcall/v1/TimelineEntry.js';
export type { ToolDefinition__Output } from './gen/endcall/v1/ToolDefinition.js';
export type { WatchSessionRequest } from './gen/endcall/v1/WatchSessionRequest.js';
export type { Duration, Duration__Output } from './gen/google/protobuf/Duration.js';
export type { Timestamp__Output } from './gen/google/protobuf/Timestamp.js';

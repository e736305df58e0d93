export {
  createSidecarEndCallTool,
  closeReasonOf,
  jobRoomName,
  type AttachOptions,
  type SessionRef,
  FALLBACK_DESCRIPTION,
  FALLBACK_REPLY_TIMEOUT_MS,
  type SidecarEndCallToolOptions,
  type SidecarEndCallToolset,
  type ToolLogger,
} from './tool.js';

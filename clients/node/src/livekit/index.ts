export {
  createSidecarEndCallTool,
  closeReasonOf,
  type AttachOptions,
  FALLBACK_DESCRIPTION,
  FALLBACK_REPLY_TIMEOUT_MS,
  type SidecarEndCallToolOptions,
  type SidecarEndCallToolset,
  type ToolLogger,
} from './tool.js';

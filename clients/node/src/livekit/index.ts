export {
  createSidecarEndCallTool,
  closeReasonOf,
  FALLBACK_DESCRIPTION,
  FALLBACK_REPLY_TIMEOUT_MS,
  type SidecarEndCallToolOptions,
  type SidecarEndCallToolset,
  type ToolLogger,
} from './tool.js';

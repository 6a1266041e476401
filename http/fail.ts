// Every error the endpoint answers is `{ "error": "..." }` with its status code.
import type { Context } from "hono";

export type ErrorStatus = 400 | 401 | 403 | 404 | 421 | 429 | 500;

export const fail = (c: Context, status: ErrorStatus, error: string): Response =>
  c.json({ error }, status);

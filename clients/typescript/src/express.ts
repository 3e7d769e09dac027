// Gate an Express (or any connect-style) route on a feature; no dependency on Express itself.
// Denials match the sidecar's /v1/authz and the Python gates: 401 no tenant, 403 with the reason,
// 429 over a limit (Retry-After), 503 when the sidecar gave no answer and the feature fails closed.
import { type Decision, type TiergateClient, UNREACHABLE } from "./index.js";

export interface GateRequest {
  header(name: string): string | undefined;
}
export interface GateResponse {
  status(code: number): GateResponse;
  set(name: string, value: string): GateResponse;
  json(body: unknown): unknown;
  locals: Record<string, unknown>;
}
export type Next = (error?: unknown) => void;

export interface GateOptions {
  quantity?: number;
  /** The header your own authentication sets (never one a caller may forge). */
  tenantHeader?: string;
}

export function requireFeature(client: TiergateClient, feature: string, options: GateOptions = {}) {
  const header = options.tenantHeader ?? "X-Tenant-Id";
  return async (req: GateRequest, res: GateResponse, next: Next): Promise<void> => {
    const tenant = (req.header(header) ?? "").trim();
    if (!tenant) {
      const message = `no tenant: the ${header} header is missing or empty`;
      res.status(401).json({ error: { code: "missing_tenant", message, field: header } });
      return;
    }
    let decision: Decision;
    try {
      decision = await client.check(tenant, feature, options.quantity ?? 1);
    } catch (error) {
      next(error);
      return;
    }
    if (decision.allow) {
      res.locals["tiergate"] = decision;
      next();
      return;
    }
    const body = { allow: false, reason: decision.reason, feature, tier: decision.tier, decision };
    if (decision.reason === "limit_exceeded") {
      if (decision.valid_until) {
        const wait = Math.ceil((Date.parse(decision.valid_until) - Date.now()) / 1000);
        res.set("Retry-After", String(Math.max(1, wait)));
      }
      res.status(429).json(body);
      return;
    }
    res.status(decision.reason === UNREACHABLE ? 503 : 403).json(body);
  };
}

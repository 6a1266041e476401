// DNS rebinding: a web page elsewhere can make a browser on this machine send requests to the
// switch under a name the page's site controls (evil.example resolving to 127.0.0.1). Such a
// request carries that name in its Host header, so only Host names the switch is known by are
// served: the listen address, "localhost", IP literals (a page cannot rebind an address it
// does not resolve) and the names configured in http.allowedHosts. Others get 421.
import type { MiddlewareHandler } from "hono";
import { fail } from "./fail.ts";

const IPV4 = /^\d{1,3}(\.\d{1,3}){3}$/;

/** The host part of a Host header value (port and IPv6 brackets dropped), lower-cased. */
export function hostName(host: string): string {
  const h = host.trim().toLowerCase();
  if (h.startsWith("[")) return h.slice(1, h.indexOf("]") < 0 ? undefined : h.indexOf("]"));
  const colon = h.lastIndexOf(":");
  return colon < 0 ? h : h.slice(0, colon);
}

/** Whether a request with this Host header may be served. */
export function hostAllowed(host: string | undefined, allowed: readonly string[]): boolean {
  if (host === undefined) return false; // HTTP/1.1 requires Host; HTTP/2 supplies :authority
  const name = hostName(host);
  if (name === "localhost" || IPV4.test(name) || name.includes(":")) return true;
  return allowed.some((a) => a.toLowerCase() === name);
}

/** `names`: the listen host and http.allowedHosts. */
export function hostCheck(names: readonly string[]): MiddlewareHandler {
  return async (c, next) => {
    const host = c.req.header("host") ?? new URL(c.req.url).host;
    if (!hostAllowed(host, names)) {
      return fail(
        c,
        421,
        `Host ${JSON.stringify(host)} is not a name of this switch (use its address, ` +
          `localhost, or a name listed in http.allowedHosts)`,
      );
    }
    await next();
  };
}

// Runs against a real sidecar: TIERGATE_TEST_SIDECAR is its URL (tests/integration/clients starts it).
import assert from "node:assert/strict";
import { createServer, type Server } from "node:net";
import { after, describe, test } from "node:test";

import express from "express";

import { type Hold, SidecarRejectedError, SidecarUnreachableError, TiergateClient, UNREACHABLE } from "../src/index.js";
import { requireFeature } from "../src/express.js";

const sidecar = process.env["TIERGATE_TEST_SIDECAR"];
if (!sidecar) throw new Error("TIERGATE_TEST_SIDECAR is not set: run these tests through pytest (make test)");
const client = new TiergateClient({ baseUrl: sidecar, timeoutMs: 5000 });
const fresh = () => `ts-${Math.random().toString(36).slice(2, 10)}`;

describe("holds", () => {
  test("an await using block settles what it records; leaving it early releases", async () => {
    const tenant = fresh();
    {
      await using hold = await client.hold(tenant, "exports", 6, { ttlS: 60 });
      assert.ok(hold.allow && hold.holdId);
      assert.equal((await client.check(tenant, "exports")).used, 6);
      const settled = await hold.settle(2);
      assert.deepEqual([settled?.state, settled?.settled_quantity], ["settled", 2]);
    }
    assert.equal((await client.check(tenant, "exports")).used, 2);
    let kept: Hold | undefined;
    await assert.rejects(async () => {
      await using hold = await client.hold(tenant, "exports", 4);
      kept = hold;
      throw new Error("boom");
    }, /boom/);
    assert.equal(kept?.result?.state, "released");
    assert.equal((await client.check(tenant, "exports")).used, 2);
  });

  test("withHold settles the work's number, releases on a throw, skips the work when denied", async () => {
    const tenant = fresh();
    const done = await client.withHold(tenant, "api_calls", 10, async () => 7);
    assert.equal(done.result?.settled_quantity, 7);
    await assert.rejects(client.withHold(tenant, "api_calls", 5, async () => { throw new Error("no"); }), /no/);
    let ran = false;
    const denied = await client.withHold(tenant, "exports", 11, async () => { ran = true; });
    assert.deepEqual([denied.allow, denied.holdId, ran], [false, null, false]);
    assert.equal((await client.check(tenant, "api_calls")).used, 7);
  });

  test("the plain calls, a replay and a refused overage", async () => {
    const tenant = fresh();
    const hold = await client.hold(tenant, "exports", 2, { transactionId: `${tenant}-1` });
    const again = await client.hold(tenant, "exports", 2, { transactionId: `${tenant}-1` });
    assert.equal(again.holdId, hold.holdId);
    assert.equal((await hold.extend(600))?.state, "held");
    await assert.rejects(client.settleHold(hold.holdId ?? "", 20), (e: unknown) =>
      e instanceof SidecarRejectedError && e.status === 409 && e.code === "overage_rejected");
    assert.equal((await hold.settle(20, { overage: "cap" }))?.settled_quantity, 2);
    await assert.rejects(client.releaseHold("h_" + "x".repeat(80)), (e: unknown) =>
      e instanceof SidecarRejectedError && e.status === 400 && e.field === "hold_id");
  });
});

describe("calls", () => {
  test("check answers the sidecar's decision", async () => {
    const allowed = await client.check("pro-active", "api_calls", 1);
    assert.deepEqual([allowed.allow, allowed.reason, allowed.tier, allowed.remaining], [true, "ok", "pro", 1]);
    assert.ok(allowed.decision_id && allowed.policy_revision);
    const over = await client.check("pro-active", "api_calls", 2);
    assert.deepEqual([over.allow, over.reason], [false, "limit_exceeded"]);
  });

  test("batch answers in order", async () => {
    const decisions = await client.checkBatch([
      { tenant: "pro-active", feature: "sso" },
      { tenant: "nobody", feature: "sso" },
      { tenant: "pro-overdue", feature: "sso" },
    ]);
    assert.deepEqual(decisions.map((d) => d.reason), ["ok", "not_in_plan", "payment_overdue"]);
  });

  test("entitlements encode any tenant id", async () => {
    const odd = "a/b?c=d&e f#g%2F";
    assert.equal((await client.entitlements(odd)).tenant, odd);
    const overdue = await client.entitlements("pro-overdue");
    assert.equal(overdue.features?.["sso"]?.reason, "payment_overdue");
  });

  test("usage gets transaction ids and counts once", async () => {
    const tenant = fresh();
    const [one] = await client.recordUsage({ external_customer_id: tenant, code: "api_calls" });
    assert.equal(one?.status, "accepted");
    assert.equal(one?.transaction_id?.length, 32);
    const receipts = await client.recordUsage([
      { external_customer_id: tenant, code: "api_calls" },
      { transaction_id: one?.transaction_id, external_customer_id: tenant, code: "api_calls" },
    ]);
    assert.deepEqual(receipts.map((r) => r.status), ["accepted", "duplicate"]);
    assert.equal((await client.check(tenant, "api_calls")).used, 2);
  });

  test("reserve counts once", async () => {
    const tenant = fresh();
    const first = await client.reserve(tenant, "exports", 4);
    assert.deepEqual([first.allow, first.reserved, first.replayed], [true, true, false]);
    const again = await client.reserve(tenant, "exports", 4, { transactionId: first.transactionId });
    assert.deepEqual([again.allow, again.replayed], [true, true]);
    assert.equal((await client.check(tenant, "exports")).used, 4);
  });

  test("bad input is the sidecar's 400 naming the field", async () => {
    await assert.rejects(client.check("pro-active", "sso", 0), (error: unknown) => {
      assert.ok(error instanceof SidecarRejectedError);
      assert.deepEqual([error.status, error.code, error.field], [400, "bad_request", "quantity"]);
      return true;
    });
  });
});

describe("faults", () => {
  const silent: Server = createServer(() => {}); // accepts, never answers
  const refused: Server = createServer();
  after(() => {
    silent.close();
  });

  test("a closed port follows the declared fail policy", async () => {
    await new Promise<void>((resolve) => refused.listen(0, "127.0.0.1", resolve));
    const port = (refused.address() as { port: number }).port;
    await new Promise<void>((resolve) => refused.close(() => resolve()));
    const away = new TiergateClient({ baseUrl: `http://127.0.0.1:${port}`, failPolicy: { features: { dashboards: "fail_open" } } });
    const closed = await away.check("acme", "sso");
    const open = await away.check("acme", "dashboards");
    assert.deepEqual([closed.allow, closed.reason, open.allow, open.reason], [false, UNREACHABLE, true, UNREACHABLE]);
    await assert.rejects(away.recordUsage({ external_customer_id: "acme", code: "api_calls" }), SidecarUnreachableError);
  });

  test("a wedged sidecar costs the timeout, not a hang", async () => {
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    const port = (silent.address() as { port: number }).port;
    const wedged = new TiergateClient({ baseUrl: `http://127.0.0.1:${port}`, timeoutMs: 200, failPolicy: { default: "fail_open" } });
    const decision = await wedged.check("acme", "sso");
    assert.deepEqual([decision.allow, decision.reason], [true, UNREACHABLE]);
    await assert.rejects(wedged.entitlements("acme", { timeoutMs: 50 }), /no answer within 50 ms/);
  });
});

describe("checkUrl", () => {
  const checkListener = process.env["TIERGATE_TEST_CHECK_LISTENER"];
  if (!checkListener) throw new Error("TIERGATE_TEST_CHECK_LISTENER is not set: run these tests through pytest");

  test("checks go to the check listener, every other call to baseUrl", async () => {
    const closed = await closedPort();
    const split = new TiergateClient({ baseUrl: `http://127.0.0.1:${closed}`, checkUrl: `${checkListener}/`, timeoutMs: 5000 });
    assert.equal(split.checkUrl, checkListener);
    const odd = "a/b?c=d&e f#g%2F";
    const viaListener = await split.check("pro-active", "sso");
    assert.deepEqual([viaListener.allow, viaListener.reason, viaListener.tier], [true, "ok", "pro"]);
    assert.equal((await split.check(odd, "sso")).tenant, odd); // the query is encoded
    const main = await client.check("pro-active", "api_calls", 2);
    const listener = await split.check("pro-active", "api_calls", 2);
    assert.deepEqual([listener.allow, listener.reason, listener.limit], [main.allow, main.reason, main.limit]);
    await assert.rejects(split.entitlements("pro-active"), SidecarUnreachableError); // baseUrl is closed
  });

  test("a bad quantity is the check listener's 400 naming the field", async () => {
    const split = new TiergateClient({ baseUrl: sidecar, checkUrl: checkListener, timeoutMs: 5000 });
    await assert.rejects(split.check("pro-active", "sso", 0), (error: unknown) => {
      assert.ok(error instanceof SidecarRejectedError);
      assert.deepEqual([error.status, error.field], [400, "quantity"]);
      return true;
    });
  });

  test("a check listener that is down follows the fail policy", async () => {
    const down = `http://127.0.0.1:${await closedPort()}`;
    const split = new TiergateClient({ baseUrl: sidecar, checkUrl: down, failPolicy: { default: "fail_open" } });
    const decision = await split.check("nobody", "sso");
    assert.deepEqual([decision.allow, decision.reason], [true, UNREACHABLE]);
    assert.equal((await split.entitlements("pro-active")).tier, "pro"); // baseUrl still answers
  });

  test("checkUrl is validated like baseUrl", () => {
    for (const bad of ["https://127.0.0.1:9192", "127.0.0.1:9192", "http://127.0.0.1:9192/v1"]) {
      assert.throws(() => new TiergateClient({ checkUrl: bad }), /checkUrl .* must be http:\/\/host/);
    }
  });
});

async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

describe("express", () => {
  test("requireFeature gates a route", async () => {
    const app = express();
    app.get("/reports", requireFeature(client, "reports"), (_req, res) => {
      res.json({ tier: (res.locals["tiergate"] as { tier: string }).tier });
    });
    app.get("/bulk", requireFeature(client, "api_calls", { quantity: 2 }), (_req, res) => {
      res.json({});
    });
    const server = app.listen(0, "127.0.0.1");
    await new Promise<void>((resolve) => server.once("listening", resolve));
    const base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
    try {
      const get = async (path: string, tenant?: string) => {
        const response = await fetch(base + path, { headers: tenant ? { "X-Tenant-Id": tenant } : {} });
        return [response.status, await response.json(), response.headers.get("retry-after")] as const;
      };
      assert.deepEqual((await get("/reports", "pro-active")).slice(0, 2), [200, { tier: "pro" }]);
      const [status, body] = await get("/reports", "nobody");
      assert.deepEqual([status, body.reason], [403, "not_in_plan"]);
      const [limited, over, retry] = await get("/bulk", "pro-active");
      assert.deepEqual([limited, over.reason], [429, "limit_exceeded"]);
      assert.ok(Number(retry) >= 1);
      assert.equal((await get("/reports"))[0], 401);
    } finally {
      server.close();
    }
  });
});

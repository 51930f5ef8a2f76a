// ioredis transactions, multi().exec(), on a sessmesh cluster from two clients.
//
//     node transactions.js 127.0.0.1:7001 127.0.0.1:7002 127.0.0.1:7003
//
// Run by tests/middlewares.rs (after `npm ci` here). Client A talks to
// node 1, client B to node 2, as two app instances would. multi() queues
// commands and exec() sends them as one write: MULTI, the commands (each
// answered QUEUED), EXEC; exec() resolves to [error, result] per command,
// or rejects with EXECABORT when a command was refused while queuing (the
// refusals are on the error's previousErrors), or resolves to null when a
// WATCHed key changed. Prints each check and exits 1 if any failed.
"use strict";

const assert = require("node:assert/strict");
const crypto = require("node:crypto");
const Redis = require("ioredis");

const run = crypto.randomBytes(4).toString("hex");
const key = (name) => `ioredis:${run}:${name}`;

function client(address) {
  const [host, port] = address.split(":");
  // No retries: a refused command must surface, not be sent again.
  return new Redis({ host, port: Number(port), maxRetriesPerRequest: 0, lazyConnect: true });
}

async function rejection(promise) {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  assert.fail("expected the promise to reject");
}

const checks = [
  [
    "A's MULTI with SET, INCR, HSET, EXPIRE: exec() results, read on B",
    async (a, b) => {
      const results = await a
        .multi()
        .set(key("k"), "v", "EX", 100)
        .incr(key("c"))
        .incrby(key("c"), 4)
        .hset(key("h"), "user", "ada", "items", "2")
        .expire(key("h"), 100)
        .get(key("k"))
        .exec();
      assert.deepEqual(results, [
        [null, "OK"],
        [null, 1],
        [null, 5],
        [null, 2],
        [null, 1],
        [null, "v"],
      ]);
      assert.equal(await b.get(key("k")), "v");
      assert.equal(await b.get(key("c")), "5");
      assert.deepEqual(await b.hgetall(key("h")), { user: "ada", items: "2" });
      for (const name of ["k", "h"]) {
        const ttl = await b.ttl(key(name));
        assert.ok(ttl >= 99 && ttl <= 100, `TTL of ${name}: ${ttl}`);
      }
    },
  ],
  [
    "B's MULTI on the same keys sees A's writes",
    async (a, b) => {
      const results = await b
        .multi()
        .incr(key("c"))
        .hincrby(key("h"), "items", 3)
        .hget(key("h"), "user")
        .exec();
      assert.deepEqual(results, [
        [null, 6],
        [null, 5],
        [null, "ada"],
      ]);
      assert.equal(await a.get(key("c")), "6");
    },
  ],
  [
    "a command refused while queuing: exec() rejects with EXECABORT, nothing applied",
    async (a, b) => {
      // SET with one argument: wrong arity, refused when queued.
      const arity = await rejection(
        a.multi().set(key("never"), "queued").call("SET", key("never")).incr(key("c")).exec(),
      );
      assert.match(arity.message, /^EXECABORT/, arity.message);
      assert.equal(arity.previousErrors.length, 1, String(arity.previousErrors));
      assert.match(arity.previousErrors[0].message, /wrong number of arguments/i);
      assert.equal(await b.exists(key("never")), 0, "a command of the aborted transaction ran");
      assert.equal(await b.get(key("c")), "6", "INCR of the aborted transaction ran");
      // An unknown command does the same.
      const unknown = await rejection(
        a.multi().set(key("never"), "queued").call("NOSUCHCOMMAND", "x").exec(),
      );
      assert.match(unknown.message, /^EXECABORT/, unknown.message);
      assert.match(unknown.previousErrors[0].message, /unknown command/i);
      assert.equal(await b.exists(key("never")), 0);
      // The connection goes on.
      assert.equal(await a.ping(), "PONG");
    },
  ],
  [
    "an error at EXEC time fails that command only, as in Redis",
    async (a, b) => {
      const results = await a
        .multi()
        .set(key("s"), "text")
        .hset(key("s"), "f", "v")
        .incr(key("s"))
        .set(key("after"), "ran")
        .exec();
      assert.deepEqual(results[0], [null, "OK"]);
      assert.match(String(results[1][0]), /^ReplyError: WRONGTYPE/);
      assert.match(String(results[2][0]), /not an integer/);
      assert.deepEqual(results[3], [null, "OK"]);
      assert.equal(await b.get(key("after")), "ran");
      assert.equal(await b.get(key("s")), "text");
    },
  ],
  [
    "WATCH: a write on B makes A's exec() resolve to null",
    async (a, b) => {
      await a.set(key("w"), "first");
      assert.equal(await a.watch(key("w")), "OK");
      await b.set(key("w"), "theirs");
      assert.equal(await a.multi().set(key("w"), "mine").exec(), null);
      assert.equal(await b.get(key("w")), "theirs");
      // Unchanged, the same transaction goes through.
      assert.equal(await a.watch(key("w")), "OK");
      assert.deepEqual(await a.multi().set(key("w"), "mine").exec(), [[null, "OK"]]);
      assert.equal(await b.get(key("w")), "mine");
    },
  ],
];

async function main() {
  const nodes = process.argv.slice(2);
  assert.equal(nodes.length, 3, "usage: node transactions.js NODE1 NODE2 NODE3");
  const a = client(nodes[0]);
  const b = client(nodes[1]);
  await a.connect();
  await b.connect();
  console.log(`ioredis ${require("ioredis/package.json").version}, node ${process.version}`);
  let failed = 0;
  for (const [name, check] of checks) {
    const started = Date.now();
    try {
      await check(a, b);
      console.log(`ok     ${name} (${((Date.now() - started) / 1000).toFixed(1)}s)`);
    } catch (error) {
      failed += 1;
      console.log(`FAILED ${name}: ${error.message}`);
      const where = (error.stack || "").split("\n").find((line) => line.includes("transactions.js"));
      if (where) console.log(`         ${where.trim()}`);
    }
  }
  console.log(`ioredis: ${checks.length - failed} of ${checks.length} checks passed`);
  a.disconnect();
  b.disconnect();
  process.exitCode = failed ? 1 : 0;
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});

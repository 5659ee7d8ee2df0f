// The AWS SDK for JavaScript v3 against the broker's Kinesis API, written
// the way the original cake-shop functions were (see
// shared/design/reference/seed-app.md): createOrder puts the whole order as
// JSON with orderId as the partition key; notifyExternalParties reads from
// TRIM_HORIZON in batches of 10 and JSON-decodes each record. The client's
// default handler is NodeHttp2Handler, so every call here is HTTP/2 over
// cleartext with prior knowledge (h2c). Run by broker/tests/kinesis_js.rs.
"use strict";

const assert = require("node:assert/strict");
const crypto = require("node:crypto");
const {
  KinesisClient,
  CreateStreamCommand,
  DescribeStreamSummaryCommand,
  ListShardsCommand,
  PutRecordCommand,
  GetShardIteratorCommand,
  GetRecordsCommand,
  RegisterStreamConsumerCommand,
  DescribeStreamConsumerCommand,
  SubscribeToShardCommand,
} = require("@aws-sdk/client-kinesis");

const kinesis = new KinesisClient({ endpoint: process.env.KINESIS_ENDPOINT, region: "us-east-1" });
const STREAM_NAME = `order-events-${crypto.randomUUID().slice(0, 8)}`;
const DEADLINE_MS = 60_000;

// orderManager.createOrder + placeNewOrder: the "fat event" of the original.
function createOrder(body) {
  return {
    orderId: crypto.randomUUID(),
    name: body.name,
    address: body.address,
    productId: body.productId,
    quantity: body.quantity,
    orderDate: Date.now(),
    eventType: "order_placed",
  };
}

// orderManager.placeNewOrder's Kinesis put.
async function placeNewOrder(order) {
  const params = { Data: Buffer.from(JSON.stringify(order)), PartitionKey: order.orderId, StreamName: STREAM_NAME };
  return kinesis.send(new PutRecordCommand(params));
}

// kinesisHelper.getRecords: decode each record's data as JSON.
function getRecords(records) {
  return records.map((r) => JSON.parse(Buffer.from(r.Data).toString("utf8")));
}

// notifyExternalParties' event source: TRIM_HORIZON, batches of 10, until caught up.
async function readFromTrimHorizon() {
  const { Shards } = await kinesis.send(new ListShardsCommand({ StreamName: STREAM_NAME }));
  const orders = [];
  for (const shard of Shards) {
    let { ShardIterator } = await kinesis.send(
      new GetShardIteratorCommand({ StreamName: STREAM_NAME, ShardId: shard.ShardId, ShardIteratorType: "TRIM_HORIZON" }),
    );
    const deadline = Date.now() + DEADLINE_MS;
    for (;;) {
      const r = await kinesis.send(new GetRecordsCommand({ ShardIterator, Limit: 10 }));
      assert.ok(r.Records.length <= 10, "a batch holds at most 10 records");
      orders.push(...getRecords(r.Records));
      ShardIterator = r.NextShardIterator;
      if (r.Records.length === 0 && r.MillisBehindLatest === 0) break;
      assert.ok(Date.now() < deadline, "GetRecords never caught up");
      if (r.Records.length === 0) await new Promise((done) => setTimeout(done, 20));
    }
  }
  return orders;
}

async function seedApp() {
  await kinesis.send(new CreateStreamCommand({ StreamName: STREAM_NAME, ShardCount: 2 }));
  const placed = [];
  for (let i = 0; i < 25; i++) {
    const order = createOrder({ name: `customer ${i}`, address: "somewhere", productId: `product${i % 3}`, quantity: "10" });
    const put = await placeNewOrder(order);
    assert.match(put.SequenceNumber, /^[1-9][0-9]*$/);
    assert.match(put.ShardId, /^shardId-[0-9]{12}$/);
    placed.push(order);
  }
  // A second event for some orders (orderFulfillment), same partition key.
  for (const order of placed.slice(0, 5)) {
    await placeNewOrder({ ...order, eventType: "order_fulfilled", fulfillmentId: "f1", fulfillmentDate: Date.now() });
  }
  const read = await readFromTrimHorizon();
  assert.equal(read.length, 30);
  for (const order of placed) {
    const events = read.filter((o) => o.orderId === order.orderId);
    assert.deepEqual(events[0], order, "the order arrives whole");
    if (placed.indexOf(order) < 5) {
      assert.deepEqual(events.map((e) => e.eventType), ["order_placed", "order_fulfilled"], "in order per orderId");
    }
  }
}

async function subscribe() {
  await kinesis.send(new CreateStreamCommand({ StreamName: STREAM_NAME, ShardCount: 1 }));
  const { StreamDescriptionSummary } = await kinesis.send(new DescribeStreamSummaryCommand({ StreamName: STREAM_NAME }));
  const { Consumer } = await kinesis.send(
    new RegisterStreamConsumerCommand({ StreamARN: StreamDescriptionSummary.StreamARN, ConsumerName: "notifier" }),
  );
  const deadline = Date.now() + DEADLINE_MS;
  for (;;) {
    const { ConsumerDescription } = await kinesis.send(new DescribeStreamConsumerCommand({ ConsumerARN: Consumer.ConsumerARN }));
    if (ConsumerDescription.ConsumerStatus === "ACTIVE") break;
    assert.ok(Date.now() < deadline, "the consumer never became ACTIVE");
    await new Promise((done) => setTimeout(done, 50));
  }
  const orders = [];
  for (let i = 0; i < 10; i++) {
    const order = createOrder({ name: `sub ${i}`, address: "here", productId: "p", quantity: "1" });
    await placeNewOrder(order);
    orders.push(order);
  }
  const r = await kinesis.send(
    new SubscribeToShardCommand({
      ConsumerARN: Consumer.ConsumerARN,
      ShardId: "shardId-000000000000",
      StartingPosition: { Type: "TRIM_HORIZON" },
    }),
  );
  const got = [];
  for await (const event of r.EventStream) {
    const e = event.SubscribeToShardEvent;
    assert.ok(e, `an event: ${JSON.stringify(Object.keys(event))}`);
    assert.match(e.ContinuationSequenceNumber, /^[1-9][0-9]*$/);
    got.push(...getRecords(e.Records));
    if (got.length >= orders.length) break;
    assert.ok(Date.now() < deadline, "the subscription never delivered every order");
  }
  assert.deepEqual(got, orders);
}

// HTTP/2 with prior knowledge by hand (node's http2 module): the same
// listener that serves HTTP/1.1 answers an h2c connection.
async function h2c() {
  const http2 = require("node:http2");
  const session = http2.connect(process.env.KINESIS_ENDPOINT);
  const answer = await new Promise((resolve, reject) => {
    const req = session.request({
      ":method": "POST",
      ":path": "/",
      "x-amz-target": "Kinesis_20131202.ListStreams",
      "content-type": "application/x-amz-json-1.1",
      "x-amz-date": "20260101T000000Z",
      authorization:
        "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/kinesis/aws4_request, SignedHeaders=host;x-amz-date, Signature=00",
    });
    let headers;
    let body = "";
    req.on("response", (h) => (headers = h));
    req.on("data", (d) => (body += d));
    req.on("end", () => resolve({ headers, body }));
    req.on("error", reject);
    req.end("{}");
  });
  session.close();
  assert.equal(answer.headers[":status"], 200);
  assert.equal(answer.headers["content-type"], "application/x-amz-json-1.1");
  assert.ok(answer.headers["x-amzn-requestid"], "a request id");
  assert.deepEqual(JSON.parse(answer.body).StreamNames, []);
}

const cases = { seedApp, subscribe, h2c };
cases[process.argv[2]]()
  .then(() => {
    console.log(`ok ${process.argv[2]}`);
    kinesis.destroy();
    process.exit(0);
  })
  .catch((e) => {
    console.error(e);
    process.exit(1);
  });

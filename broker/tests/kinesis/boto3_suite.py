"""boto3 against the broker's Kinesis API: one case per argv[1].

Run by broker/tests/kinesis_boto3.rs with AWS_ENDPOINT_URL_KINESIS pointing
at an in-process broker. Every case uses its own streams, asserts on values
(not on "it ran") and prints "ok <case>" at the end.
"""

import datetime
import os
import sys
import time
import uuid

import boto3
import botocore
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = os.environ["KINESIS_ENDPOINT"]
DEADLINE_S = 60


def client(**config):
    return boto3.client("kinesis", endpoint_url=ENDPOINT, config=Config(**config))


def error_code(fn, *args, **kwargs):
    """The AWS error name a call fails with (it must fail)."""
    try:
        fn(*args, **kwargs)
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["Error"].get("Message", ""), e.response
    raise AssertionError(f"{fn.__name__} succeeded but was expected to fail")


def advance(ms):
    """Moves the broker's manual clock forward (see kinesis/mod.rs)."""
    print(f"ADVANCE {ms}", flush=True)
    answer = sys.stdin.readline().strip()
    assert answer == "done", f"the broker has no manual clock ({answer!r})"


def advance_on_throttle(k, ms=1100):
    """Advances the clock whenever a call of `k` is throttled, before boto3 retries it."""
    def on_retry(response=None, **_):
        if response and response[1].get("Error", {}).get("Code") in (
                "ProvisionedThroughputExceededException", "LimitExceededException"):
            advance(ms)
    k.meta.events.register_first("needs-retry.kinesis", on_retry)
    return k


def name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_until(what, predicate):
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def read_all(k, stream, shard_id, iterator_type="TRIM_HORIZON", **kw):
    """GetRecords from an iterator until the shard's end; returns the records."""
    it = k.get_shard_iterator(StreamName=stream, ShardId=shard_id, ShardIteratorType=iterator_type, **kw)["ShardIterator"]
    records = []
    deadline = time.monotonic() + DEADLINE_S
    while True:
        r = k.get_records(ShardIterator=it, Limit=1000)
        records.extend(r["Records"])
        it = r["NextShardIterator"]
        if not r["Records"] and r["MillisBehindLatest"] == 0:
            return records
        assert time.monotonic() < deadline, "GetRecords never reached the end"


def case_streams():
    k = client()
    s = name("streams")
    k.create_stream(StreamName=s, ShardCount=2)
    k.get_waiter("stream_exists").wait(StreamName=s, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    d = k.describe_stream(StreamName=s)["StreamDescription"]
    assert d["StreamName"] == s and d["StreamStatus"] == "ACTIVE", d
    assert d["StreamARN"] == f"arn:aws:kinesis:us-east-1:000000000000:stream/{s}", d["StreamARN"]
    assert d["RetentionPeriodHours"] == 24 and d["HasMoreShards"] is False
    assert [sh["ShardId"] for sh in d["Shards"]] == ["shardId-000000000000", "shardId-000000000001"]
    assert d["Shards"][0]["HashKeyRange"] == {"StartingHashKey": "0", "EndingHashKey": str(2**127 - 1)}
    assert d["Shards"][1]["HashKeyRange"]["EndingHashKey"] == str(2**128 - 1)
    assert "EndingSequenceNumber" not in d["Shards"][0]["SequenceNumberRange"], "open shards have no end"
    assert isinstance(d["StreamCreationTimestamp"], datetime.datetime)
    page = k.describe_stream(StreamName=s, Limit=1)["StreamDescription"]
    assert len(page["Shards"]) == 1 and page["HasMoreShards"] is True
    rest = k.describe_stream(StreamName=s, ExclusiveStartShardId="shardId-000000000000")["StreamDescription"]
    assert [sh["ShardId"] for sh in rest["Shards"]] == ["shardId-000000000001"]

    summary = k.describe_stream_summary(StreamName=s)["StreamDescriptionSummary"]
    assert summary["OpenShardCount"] == 2 and summary["ConsumerCount"] == 0, summary
    assert summary["StreamModeDetails"] == {"StreamMode": "PROVISIONED"}
    assert summary["EncryptionType"] == "NONE" and summary["MaxRecordSizeInKiB"] == 1024
    arn, stream_id = summary["StreamARN"], summary["StreamId"]
    assert k.describe_stream_summary(StreamARN=arn)["StreamDescriptionSummary"]["StreamName"] == s
    code, msg, _ = error_code(k.describe_stream_summary, StreamARN=arn.replace("us-east-1", "eu-west-1"))
    assert code == "ResourceNotFoundException", (code, msg)
    assert len(stream_id) == 24 and stream_id[20] == "-", stream_id

    # ListShards: paging with NextToken, ExclusiveStartShardId, every filter type.
    first = k.list_shards(StreamName=s, MaxResults=1)
    assert [x["ShardId"] for x in first["Shards"]] == ["shardId-000000000000"] and "NextToken" in first
    second = k.list_shards(NextToken=first["NextToken"])
    assert [x["ShardId"] for x in second["Shards"]] == ["shardId-000000000001"] and "NextToken" not in second
    after = k.list_shards(StreamName=s, ExclusiveStartShardId="shardId-000000000000")
    assert [x["ShardId"] for x in after["Shards"]] == ["shardId-000000000001"]
    code, msg, _ = error_code(k.list_shards, StreamName=s, NextToken=first["NextToken"])
    assert code == "InvalidArgumentException" and "NextToken and StreamName" in msg, (code, msg)
    now = datetime.datetime.now(datetime.timezone.utc)
    for f in [
        {"Type": "AT_TRIM_HORIZON"},
        {"Type": "FROM_TRIM_HORIZON"},
        {"Type": "AT_LATEST"},
        {"Type": "AT_TIMESTAMP", "Timestamp": now},
        {"Type": "FROM_TIMESTAMP", "Timestamp": now},
    ]:
        got = k.list_shards(StreamARN=arn, ShardFilter=f)["Shards"]
        assert len(got) == 2, (f, got)
    got = k.list_shards(StreamName=s, ShardFilter={"Type": "AFTER_SHARD_ID", "ShardId": "shardId-000000000000"})
    assert [x["ShardId"] for x in got["Shards"]] == ["shardId-000000000001"]

    # ListStreams: Limit, ExclusiveStartStreamName, NextToken, StreamSummaries.
    prefix = name("list")
    for i in range(3):
        k.create_stream(StreamName=f"{prefix}-{i}", ShardCount=1)
    seen = []
    r = k.list_streams(Limit=1, ExclusiveStartStreamName=f"{prefix}-")
    while True:
        seen.extend(n for n in r["StreamNames"] if n.startswith(prefix))
        assert len(r["StreamSummaries"]) == len(r["StreamNames"])
        assert all(x["StreamStatus"] == "ACTIVE" for x in r["StreamSummaries"])
        if not r["HasMoreStreams"] or len(seen) == 3:
            break
        assert "NextToken" in r
        r = k.list_streams(NextToken=r["NextToken"])
    assert seen == [f"{prefix}-{i}" for i in range(3)], seen
    # boto3's paginator drives NextToken by itself.
    all_names = [n for page in k.get_paginator("list_streams").paginate(PaginationConfig={"PageSize": 2}) for n in page["StreamNames"]]
    assert {s, *seen} <= set(all_names), all_names

    # On-demand: no ShardCount (or the mode) gives 4 shards; mode switches both ways.
    od = name("ondemand")
    k.create_stream(StreamName=od)
    sm = k.describe_stream_summary(StreamName=od)["StreamDescriptionSummary"]
    assert sm["StreamModeDetails"]["StreamMode"] == "ON_DEMAND" and sm["OpenShardCount"] == 4, sm
    od2 = name("ondemand")
    k.create_stream(StreamName=od2, StreamModeDetails={"StreamMode": "ON_DEMAND"}, Tags={"team": "cakes"})
    assert k.list_tags_for_stream(StreamName=od2)["Tags"] == [{"Key": "team", "Value": "cakes"}]
    k.update_stream_mode(StreamARN=arn, StreamModeDetails={"StreamMode": "ON_DEMAND"})
    assert k.describe_stream_summary(StreamName=s)["StreamDescriptionSummary"]["StreamModeDetails"]["StreamMode"] == "ON_DEMAND"
    w = k.update_stream_warm_throughput(StreamName=s, WarmThroughputMiBps=10)
    assert w["WarmThroughput"] == {"TargetMiBps": 10, "CurrentMiBps": 10} and w["StreamARN"] == arn, w
    k.update_stream_mode(StreamARN=arn, StreamModeDetails={"StreamMode": "PROVISIONED"})
    code, _, _ = error_code(k.update_stream_warm_throughput, StreamName=s, WarmThroughputMiBps=10)
    assert code == "InvalidArgumentException", code

    k.update_max_record_size(StreamARN=arn, MaxRecordSizeInKiB=1024)
    code, msg, _ = error_code(k.update_max_record_size, StreamARN=arn, MaxRecordSizeInKiB=2048)
    assert code == "InvalidArgumentException" and "write quota" in msg, (code, msg)

    limits = k.describe_limits()
    assert limits["OnDemandStreamCount"] >= 2 and limits["OnDemandStreamCountLimit"] == 50, limits
    assert limits["OpenShardCount"] >= 2 + 3 + 8 and limits["ShardLimit"] > 0, limits

    settings = k.describe_account_settings()["MinimumThroughputBillingCommitment"]
    assert settings["Status"] == "DISABLED", settings
    on = k.update_account_settings(MinimumThroughputBillingCommitment={"Status": "ENABLED"})
    assert on["MinimumThroughputBillingCommitment"]["Status"] == "ENABLED"
    off = k.update_account_settings(MinimumThroughputBillingCommitment={"Status": "DISABLED"})
    assert off["MinimumThroughputBillingCommitment"]["Status"] == "ENABLED_UNTIL_EARLIEST_ALLOWED_END", off

    # Duplicates, deletion, identity by StreamId.
    code, msg, _ = error_code(k.create_stream, StreamName=s, ShardCount=1)
    assert code == "ResourceInUseException" and "already exists" in msg, (code, msg)
    k.delete_stream(StreamName=s)
    code, _, _ = error_code(k.describe_stream, StreamName=s)
    assert code == "ResourceNotFoundException", code
    k.delete_stream(StreamARN=f"arn:aws:kinesis:us-east-1:000000000000:stream/{od}")
    code, _, _ = error_code(k.describe_stream_summary, StreamName=od)
    assert code == "ResourceNotFoundException", code


def case_data():
    k = client()
    s = name("data")
    k.create_stream(StreamName=s, ShardCount=2)
    put = k.put_record(StreamName=s, Data=b"first", PartitionKey="a")
    assert put["ShardId"].startswith("shardId-") and put["EncryptionType"] == "NONE", put
    # ExplicitHashKey routes: 0 is the first shard, 2^127 the second.
    low = k.put_record(StreamName=s, Data=b"low", PartitionKey="x", ExplicitHashKey="0")
    high = k.put_record(StreamName=s, Data=b"high", PartitionKey="x", ExplicitHashKey=str(2**127),
                        SequenceNumberForOrdering=low["SequenceNumber"])
    assert low["ShardId"] == "shardId-000000000000" and high["ShardId"] == "shardId-000000000001", (low, high)
    entries = [{"Data": f"r{i}".encode(), "PartitionKey": "same-key"} for i in range(300)]
    r = k.put_records(StreamName=s, Records=entries)
    assert r["FailedRecordCount"] == 0 and len(r["Records"]) == 300, r["FailedRecordCount"]
    shard = r["Records"][0]["ShardId"]
    seqs = [x["SequenceNumber"] for x in r["Records"]]
    assert all(x["ShardId"] == shard for x in r["Records"]), "one key, one shard"
    assert seqs == sorted(seqs, key=int) and len(set(seqs)) == 300, "strictly increasing per shard"

    records = read_all(k, s, shard)
    mine = [x for x in records if x["PartitionKey"] == "same-key"]
    assert [x["Data"] for x in mine] == [f"r{i}".encode() for i in range(300)], "in order, intact"
    assert [x["SequenceNumber"] for x in mine] == seqs
    assert all(isinstance(x["ApproximateArrivalTimestamp"], datetime.datetime) for x in mine)

    # Every iterator type.
    mid = seqs[150]
    at = k.get_shard_iterator(StreamName=s, ShardId=shard, ShardIteratorType="AT_SEQUENCE_NUMBER", StartingSequenceNumber=mid)
    got = k.get_records(ShardIterator=at["ShardIterator"], Limit=1)["Records"]
    assert got[0]["SequenceNumber"] == mid and got[0]["Data"] == b"r150"
    after = k.get_shard_iterator(StreamName=s, ShardId=shard, ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=mid)
    got = k.get_records(ShardIterator=after["ShardIterator"], Limit=2)["Records"]
    assert [x["Data"] for x in got] == [b"r151", b"r152"]
    latest = k.get_shard_iterator(StreamName=s, ShardId=shard, ShardIteratorType="LATEST")["ShardIterator"]
    assert k.get_records(ShardIterator=latest)["Records"] == []
    k.put_record(StreamName=s, Data=b"after-latest", PartitionKey="same-key")
    assert [x["Data"] for x in k.get_records(ShardIterator=latest)["Records"]] == [b"after-latest"]
    # An iterator can be reused until it expires: the same records again.
    assert [x["Data"] for x in k.get_records(ShardIterator=latest)["Records"]] == [b"after-latest"]
    # AT_TIMESTAMP: the first record that arrived at or after the time.
    stamp = mine[200]["ApproximateArrivalTimestamp"]
    ts = k.get_shard_iterator(StreamName=s, ShardId=shard, ShardIteratorType="AT_TIMESTAMP", Timestamp=stamp)
    got = k.get_records(ShardIterator=ts["ShardIterator"], Limit=1000)["Records"]
    # boto3 sends JSON timestamps in whole seconds.
    floor = stamp.replace(microsecond=0)
    first_at = [x for x in records if x["ApproximateArrivalTimestamp"] >= floor][0]
    assert got[0]["SequenceNumber"] == first_at["SequenceNumber"], (got[0], first_at)
    trim = k.get_shard_iterator(StreamARN=f"arn:aws:kinesis:us-east-1:000000000000:stream/{s}", ShardId=shard,
                                ShardIteratorType="TRIM_HORIZON")
    first = k.get_records(ShardIterator=trim["ShardIterator"], Limit=1)
    assert first["Records"][0]["SequenceNumber"] == min((x["SequenceNumber"] for x in records), key=int)
    assert first["MillisBehindLatest"] >= 0

    # A sequence number of another shard is refused.
    other = "shardId-000000000000" if shard != "shardId-000000000000" else "shardId-000000000001"
    code, msg, _ = error_code(k.get_shard_iterator, StreamName=s, ShardId=other, ShardIteratorType="AT_SEQUENCE_NUMBER",
                              StartingSequenceNumber=mid)
    assert code == "InvalidArgumentException" and "StartingSequenceNumber" in msg, (code, msg)
    # Binary data round-trips.
    blob = bytes(range(256)) * 4
    b = k.put_record(StreamName=s, Data=blob, PartitionKey="bin")
    it = k.get_shard_iterator(StreamName=s, ShardId=b["ShardId"], ShardIteratorType="AT_SEQUENCE_NUMBER",
                              StartingSequenceNumber=b["SequenceNumber"])["ShardIterator"]
    assert k.get_records(ShardIterator=it, Limit=1)["Records"][0]["Data"] == blob


def case_lifecycles():
    k = client()
    s = name("life")
    k.create_stream(StreamName=s, ShardCount=1)
    # Retention.
    k.increase_stream_retention_period(StreamName=s, RetentionPeriodHours=48)
    assert k.describe_stream_summary(StreamName=s)["StreamDescriptionSummary"]["RetentionPeriodHours"] == 48
    code, msg, _ = error_code(k.decrease_stream_retention_period, StreamName=s, RetentionPeriodHours=72)
    assert code == "InvalidArgumentException" and "IncreaseStreamRetentionPeriod" in msg, (code, msg)
    k.decrease_stream_retention_period(StreamName=s, RetentionPeriodHours=24)
    code, _, _ = error_code(k.increase_stream_retention_period, StreamName=s, RetentionPeriodHours=200)
    assert code == "InvalidArgumentException", code
    assert k.describe_stream(StreamName=s)["StreamDescription"]["RetentionPeriodHours"] == 24

    # Tags: add, page, replace, remove.
    k.add_tags_to_stream(StreamName=s, Tags={f"k{i:02}": f"v{i}" for i in range(12)})
    page = k.list_tags_for_stream(StreamName=s, Limit=5)
    assert [t["Key"] for t in page["Tags"]] == ["k00", "k01", "k02", "k03", "k04"] and page["HasMoreTags"] is True
    rest = k.list_tags_for_stream(StreamName=s, ExclusiveStartTagKey="k04", Limit=50)
    assert len(rest["Tags"]) == 7 and rest["HasMoreTags"] is False
    k.add_tags_to_stream(StreamName=s, Tags={"k00": "changed"})
    k.remove_tags_from_stream(StreamName=s, TagKeys=["k01", "k02", "absent"])
    tags = {t["Key"]: t["Value"] for t in k.list_tags_for_stream(StreamName=s, Limit=50)["Tags"]}
    assert tags["k00"] == "changed" and "k01" not in tags and len(tags) == 10, tags
    code, msg, _ = error_code(k.add_tags_to_stream, StreamName=s, Tags={f"x{i}": "v" for i in range(41)})
    assert code == "InvalidArgumentException" and "51 tags" in msg, (code, msg)
    arn = k.describe_stream_summary(StreamName=s)["StreamDescriptionSummary"]["StreamARN"]
    k.tag_resource(ResourceARN=arn, Tags={"owner": "bakery"})
    assert {"Key": "owner", "Value": "bakery"} in k.list_tags_for_resource(ResourceARN=arn)["Tags"]
    k.untag_resource(ResourceARN=arn, TagKeys=["owner"])
    assert all(t["Key"] != "owner" for t in k.list_tags_for_resource(ResourceARN=arn)["Tags"])

    # Resource policies: stored and returned.
    policy = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"kinesis:GetRecords","Resource":"*"}]}'
    assert k.get_resource_policy(ResourceARN=arn)["Policy"] == "{}"
    k.put_resource_policy(ResourceARN=arn, Policy=policy)
    assert k.get_resource_policy(ResourceARN=arn)["Policy"] == policy
    code, _, _ = error_code(k.put_resource_policy, ResourceARN=arn, Policy="not json")
    assert code == "InvalidArgumentException", code
    k.delete_resource_policy(ResourceARN=arn)
    assert k.get_resource_policy(ResourceARN=arn)["Policy"] == "{}"

    # Enhanced monitoring and encryption: recorded and reported.
    m = k.enable_enhanced_monitoring(StreamName=s, ShardLevelMetrics=["IncomingBytes", "OutgoingRecords"])
    assert m["CurrentShardLevelMetrics"] == [] and sorted(m["DesiredShardLevelMetrics"]) == ["IncomingBytes", "OutgoingRecords"], m
    m = k.disable_enhanced_monitoring(StreamName=s, ShardLevelMetrics=["IncomingBytes"])
    assert m["DesiredShardLevelMetrics"] == ["OutgoingRecords"], m
    m = k.enable_enhanced_monitoring(StreamName=s, ShardLevelMetrics=["ALL"])
    assert len(m["DesiredShardLevelMetrics"]) == 7
    em = k.describe_stream(StreamName=s)["StreamDescription"]["EnhancedMonitoring"]
    assert len(em[0]["ShardLevelMetrics"]) == 7, em
    k.start_stream_encryption(StreamName=s, EncryptionType="KMS", KeyId="alias/aws/kinesis")
    sm = k.describe_stream_summary(StreamName=s)["StreamDescriptionSummary"]
    assert sm["EncryptionType"] == "KMS" and sm["KeyId"] == "alias/aws/kinesis", sm
    put = k.put_record(StreamName=s, Data=b"x", PartitionKey="k")
    assert put["EncryptionType"] == "KMS"
    k.stop_stream_encryption(StreamName=s, EncryptionType="KMS", KeyId="alias/aws/kinesis")
    assert k.describe_stream_summary(StreamName=s)["StreamDescriptionSummary"]["EncryptionType"] == "NONE"


def wait_active(k, arn):
    return wait_until("the consumer to be ACTIVE", lambda: k.describe_stream_consumer(ConsumerARN=arn)["ConsumerDescription"]["ConsumerStatus"] == "ACTIVE")


def all_active(k, stream_arn):
    return all(x["ConsumerStatus"] == "ACTIVE" for x in k.list_stream_consumers(StreamARN=stream_arn)["Consumers"])


def case_consumers():
    """On a manual clock, with consumers CREATING for 10 s: the clock moves only when the script says."""
    k = client()
    s = name("fanout")
    k.create_stream(StreamName=s, ShardCount=1)
    stream_arn = k.describe_stream_summary(StreamName=s)["StreamDescriptionSummary"]["StreamARN"]
    c = k.register_stream_consumer(StreamARN=stream_arn, ConsumerName="app")["Consumer"]
    assert c["ConsumerStatus"] == "CREATING" and c["ConsumerARN"].startswith(stream_arn + "/consumer/app:"), c
    assert k.describe_stream_consumer(ConsumerARN=c["ConsumerARN"])["ConsumerDescription"]["ConsumerStatus"] == "CREATING"
    advance(10_000)
    wait_active(k, c["ConsumerARN"])
    by_name = k.describe_stream_consumer(StreamARN=stream_arn, ConsumerName="app")["ConsumerDescription"]
    assert by_name["ConsumerARN"] == c["ConsumerARN"] and by_name["StreamARN"] == stream_arn
    once = client(retries={"max_attempts": 1})
    code, msg, _ = error_code(once.register_stream_consumer, StreamARN=stream_arn, ConsumerName="app")
    assert code == "ResourceInUseException", (code, msg)
    assert k.describe_stream_summary(StreamName=s)["StreamDescriptionSummary"]["ConsumerCount"] == 1
    # RegisterStreamConsumer is 5 calls per second.
    advance(1000)
    for i in range(5):
        once.register_stream_consumer(StreamARN=stream_arn, ConsumerName=f"burst{i}")
    code, msg, _ = error_code(once.register_stream_consumer, StreamARN=stream_arn, ConsumerName="burst5")
    assert code == "LimitExceededException" and "Rate exceeded" in msg, (code, msg)
    # At most 5 CREATING at once.
    advance(1000)
    code, msg, _ = error_code(once.register_stream_consumer, StreamARN=stream_arn, ConsumerName="burst5")
    assert code == "LimitExceededException" and "being created" in msg, (code, msg)
    advance(10_000)
    assert all_active(k, stream_arn)
    # At most 20 per stream.
    for i in range(14):
        once.register_stream_consumer(StreamARN=stream_arn, ConsumerName=f"more{i}")
        if i % 5 == 4:
            advance(10_000)
    advance(10_000)
    assert all_active(k, stream_arn)
    code, msg, _ = error_code(once.register_stream_consumer, StreamARN=stream_arn, ConsumerName="twentyfirst")
    assert code == "LimitExceededException" and "20 registered consumers" in msg, (code, msg)
    # Paging.
    names, token = [], None
    while True:
        kw = {"NextToken": token} if token else {}
        page = k.list_stream_consumers(StreamARN=stream_arn, MaxResults=7, **kw)
        names.extend(x["ConsumerName"] for x in page["Consumers"])
        token = page.get("NextToken")
        if not token:
            break
    assert len(names) == 20 and len(set(names)) == 20 and names[0] == "app", names
    # Tags on a consumer ARN.
    k.tag_resource(ResourceARN=c["ConsumerARN"], Tags={"team": "delivery"})
    assert k.list_tags_for_resource(ResourceARN=c["ConsumerARN"])["Tags"] == [{"Key": "team", "Value": "delivery"}]
    # Deregister by ARN and by name; the old ARN is gone.
    advance(1000)
    k.deregister_stream_consumer(ConsumerARN=c["ConsumerARN"])
    code, _, _ = error_code(k.describe_stream_consumer, ConsumerARN=c["ConsumerARN"])
    assert code == "ResourceNotFoundException", code
    k.deregister_stream_consumer(StreamARN=stream_arn, ConsumerName="burst0")
    assert len(k.list_stream_consumers(StreamARN=stream_arn)["Consumers"]) == 18
    # A stream with consumers is deleted only with EnforceConsumerDeletion.
    code, msg, _ = error_code(k.delete_stream, StreamName=s)
    assert code == "ResourceInUseException" and "consumer" in msg, (code, msg)
    k.delete_stream(StreamName=s, EnforceConsumerDeletion=True)
    code, _, _ = error_code(k.describe_stream_summary, StreamName=s)
    assert code == "ResourceNotFoundException"


def subscribe_events(k, consumer_arn, shard_id, position, want, deadline_s=DEADLINE_S):
    """Subscribes and collects records until `want` arrived; returns (records, last continuation)."""
    r = k.subscribe_to_shard(ConsumerARN=consumer_arn, ShardId=shard_id, StartingPosition=position)
    records, continuation = [], None
    deadline = time.monotonic() + deadline_s
    for event in r["EventStream"]:
        e = event["SubscribeToShardEvent"]
        records.extend(e["Records"])
        continuation = e["ContinuationSequenceNumber"]
        assert e["MillisBehindLatest"] >= 0
        if len(records) >= want:
            break
        assert time.monotonic() < deadline, f"only {len(records)} of {want} records arrived"
    r["EventStream"].close()
    return records, continuation


def case_subscribe():
    k = client()
    s = name("subscribe")
    k.create_stream(StreamName=s, ShardCount=1)
    stream_arn = k.describe_stream_summary(StreamName=s)["StreamDescriptionSummary"]["StreamARN"]
    consumer = k.register_stream_consumer(StreamARN=stream_arn, ConsumerName="efo")["Consumer"]["ConsumerARN"]
    code, _, _ = error_code(k.subscribe_to_shard, ConsumerARN=consumer, ShardId="shardId-000000000000",
                            StartingPosition={"Type": "TRIM_HORIZON"})
    assert code == "ResourceInUseException", "a CREATING consumer cannot subscribe"
    wait_active(k, consumer)
    k.put_records(StreamName=s, Records=[{"Data": f"e{i}".encode(), "PartitionKey": "k"} for i in range(50)])
    records, continuation = subscribe_events(k, consumer, "shardId-000000000000", {"Type": "TRIM_HORIZON"}, 50)
    assert [x["Data"] for x in records[:50]] == [f"e{i}".encode() for i in range(50)]
    # The continuation resumes after what was delivered, with AFTER_SEQUENCE_NUMBER as KCL does.
    k.put_records(StreamName=s, Records=[{"Data": f"f{i}".encode(), "PartitionKey": "k"} for i in range(5)])
    more, _ = wait_until("the resubscription", lambda: _resubscribe(k, consumer, continuation))
    assert [x["Data"] for x in more[:5]] == [f"f{i}".encode() for i in range(5)], more
    # AT_SEQUENCE_NUMBER of a record starts at that record.
    again, _ = subscribe_events_retrying(k, consumer, {"Type": "AT_SEQUENCE_NUMBER", "SequenceNumber": records[10]["SequenceNumber"]}, 1)
    assert again[0]["Data"] == b"e10"


def _resubscribe(k, consumer, continuation):
    try:
        return subscribe_events(k, consumer, "shardId-000000000000",
                                {"Type": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": continuation}, 5)
    except ClientError as e:
        # The previous subscription may still be winding down (5 s takeover rule).
        assert e.response["Error"]["Code"] == "ResourceInUseException", e
        return None


def subscribe_events_retrying(k, consumer, position, want):
    def attempt():
        try:
            return subscribe_events(k, consumer, "shardId-000000000000", position, want)
        except ClientError as e:
            assert e.response["Error"]["Code"] == "ResourceInUseException", e
            return None
    return wait_until("a subscription", attempt)


def case_subscribe_takeover():
    """On a manual clock: a second subscription within 5 s is refused; a later one takes over."""
    k = client()
    s = name("takeover")
    k.create_stream(StreamName=s, ShardCount=1)
    stream_arn = k.describe_stream_summary(StreamName=s)["StreamDescriptionSummary"]["StreamARN"]
    consumer = k.register_stream_consumer(StreamARN=stream_arn, ConsumerName="one")["Consumer"]["ConsumerARN"]
    advance(1000)
    wait_active(k, consumer)
    k.put_record(StreamName=s, Data=b"x", PartitionKey="k")
    shard = "shardId-000000000000"
    first = k.subscribe_to_shard(ConsumerARN=consumer, ShardId=shard, StartingPosition={"Type": "TRIM_HORIZON"})
    events = iter(first["EventStream"])
    assert next(events)["SubscribeToShardEvent"]["Records"][0]["Data"] == b"x"
    code, msg, _ = error_code(k.subscribe_to_shard, ConsumerARN=consumer, ShardId=shard, StartingPosition={"Type": "LATEST"})
    assert code == "ResourceInUseException" and "5000 ms" in msg, (code, msg)
    advance(5000)
    second = k.subscribe_to_shard(ConsumerARN=consumer, ShardId=shard, StartingPosition={"Type": "LATEST"})
    try:
        for _ in events:
            pass
        raise AssertionError("the first subscription should end with ResourceInUseException")
    except ClientError as e:
        assert e.response["Error"]["Code"] == "ResourceInUseException", e.response
    k.put_record(StreamName=s, Data=b"y", PartitionKey="k")
    got = next(iter(second["EventStream"]))["SubscribeToShardEvent"]
    assert [r["Data"] for r in got["Records"]] == [b"y"], got
    second["EventStream"].close()


def case_throttling():
    """On a manual clock: quotas refill only when the script moves the clock."""
    k = advance_on_throttle(client(retries={"mode": "standard", "max_attempts": 10}))
    once = client(retries={"max_attempts": 1})
    s = name("throttle")
    k.create_stream(StreamName=s, ShardCount=1)
    # A 1 MiB/s shard: the second 1 MB PutRecords fails records alone, with HTTP 200.
    payload = b"x" * 2000
    batch = [{"Data": payload, "PartitionKey": str(i)} for i in range(500)]
    assert once.put_records(StreamName=s, Records=batch)["FailedRecordCount"] == 0
    partial = once.put_records(StreamName=s, Records=batch)
    assert partial["ResponseMetadata"]["HTTPStatusCode"] == 200
    failed = [x for x in partial["Records"] if "ErrorCode" in x]
    assert 400 < len(failed) < 500, len(failed)
    assert all(x["ErrorCode"] == "ProvisionedThroughputExceededException" for x in failed), failed[:3]
    assert all("SequenceNumber" in x for x in partial["Records"] if "ErrorCode" not in x)
    # A single put over quota fails with the throttling error (HTTP 400)...
    code, _, resp = error_code(once.put_record, StreamName=s, Data=b"y" * 900_000, PartitionKey="big")
    assert code == "ProvisionedThroughputExceededException" and resp["ResponseMetadata"]["HTTPStatusCode"] == 400, code
    # ...and boto3's own retries get it through once the bucket refills.
    ok = k.put_record(StreamName=s, Data=b"y" * 900_000, PartitionKey="big")
    assert ok["SequenceNumber"] and ok["ResponseMetadata"]["RetryAttempts"] >= 1, ok["ResponseMetadata"]

    # Reads: 5 GetRecords per second per shard.
    it = k.get_shard_iterator(StreamName=s, ShardId="shardId-000000000000", ShardIteratorType="LATEST")["ShardIterator"]
    codes = []
    for _ in range(8):
        try:
            once.get_records(ShardIterator=it, Limit=1)
            codes.append("ok")
        except ClientError as e:
            codes.append(e.response["Error"]["Code"])
    assert codes == ["ok"] * 5 + ["ProvisionedThroughputExceededException"] * 3, codes
    got = k.get_records(ShardIterator=it, Limit=1)
    assert got["ResponseMetadata"]["RetryAttempts"] >= 1
    # Control plane: DescribeStream is 10 per second per account (LimitExceededException).
    limited = []
    for _ in range(12):
        try:
            once.describe_stream(StreamName=s)
            limited.append("ok")
        except ClientError as e:
            limited.append(e.response["Error"]["Code"])
    assert limited == ["ok"] * 10 + ["LimitExceededException"] * 2, limited
    d = k.describe_stream(StreamName=s)
    assert d["StreamDescription"]["StreamName"] == s and d["ResponseMetadata"]["RetryAttempts"] >= 1


def case_errors():
    k = client(parameter_validation=False, retries={"max_attempts": 1})
    s = name("errors")
    k.create_stream(StreamName=s, ShardCount=1)
    checks = [
        (k.describe_stream, {"StreamName": "missing-" + s}, "ResourceNotFoundException", "not found"),
        (k.delete_stream, {"StreamName": "missing-" + s}, "ResourceNotFoundException", ""),
        (k.create_stream, {"StreamName": "bad name", "ShardCount": 1}, "ValidationException",
         "at 'streamName' failed to satisfy constraint: Member must satisfy regular expression pattern"),
        (k.create_stream, {"StreamName": "x" * 129, "ShardCount": 1}, "ValidationException", "length less than or equal to 128"),
        (k.create_stream, {"StreamName": s + "-zero", "ShardCount": 0}, "ValidationException", "greater than or equal to 1"),
        (k.put_record, {"StreamName": s, "Data": b"x", "PartitionKey": "k" * 257}, "ValidationException", "partitionKey"),
        (k.put_record, {"StreamName": s, "Data": b"x", "PartitionKey": "k", "ExplicitHashKey": str(2**128)},
         "InvalidArgumentException", "ExplicitHashKey"),
        (k.put_record, {"StreamName": s, "Data": b"x" * (1024 * 1024), "PartitionKey": "k"}, "InvalidArgumentException", "Data"),
        (k.put_records, {"StreamName": s, "Records": []}, "ValidationException", "records"),
        (k.get_shard_iterator, {"StreamName": s, "ShardId": "shardId-000000000000", "ShardIteratorType": "AT_SEQUENCE_NUMBER"},
         "InvalidArgumentException", "StartingSequenceNumber"),
        (k.get_shard_iterator, {"StreamName": s, "ShardId": "shardId-000000000009", "ShardIteratorType": "LATEST"},
         "ResourceNotFoundException", "shardId-000000000009"),
        (k.get_shard_iterator, {"StreamName": s, "ShardId": "shardId-000000000000", "ShardIteratorType": "SOMEWHERE"},
         "ValidationException", "enum value set"),
        (k.get_shard_iterator, {"StreamName": s, "ShardId": "shardId-000000000000", "ShardIteratorType": "AT_TIMESTAMP",
                                "Timestamp": datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)},
         "InvalidArgumentException", "future"),
        (k.get_records, {"ShardIterator": "AAAAforged"}, "InvalidArgumentException", "ShardIterator"),
        (k.get_records, {"ShardIterator": "x", "Limit": 10001}, "ValidationException", "less than or equal to 10000"),
        (k.increase_stream_retention_period, {"StreamName": s, "RetentionPeriodHours": 169}, "InvalidArgumentException", "168"),
        (k.list_shards, {}, "InvalidArgumentException", "Either NextToken or StreamName"),
        (k.list_shards, {"NextToken": "garbage"}, "InvalidArgumentException", "NextToken"),
        (k.describe_stream_consumer, {"ConsumerARN": f"arn:aws:kinesis:us-east-1:000000000000:stream/{s}/consumer/none:1"},
         "ResourceNotFoundException", ""),
        (k.split_shard, {"StreamName": s, "ShardToSplit": "shardId-000000000000", "NewStartingHashKey": "1"},
         "InvalidArgumentException", "not available yet"),
    ]
    for fn, kwargs, want, text in checks:
        code, msg, resp = error_code(fn, **kwargs)
        assert code == want, (fn.__name__, kwargs, code, msg)
        assert text in msg, (fn.__name__, msg)
        assert resp["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert resp["ResponseMetadata"]["RequestId"], "x-amzn-RequestId on every answer"


def case_strict():
    """Run against a broker in strict mode whose key pair is the environment's."""
    k = client(retries={"max_attempts": 1})
    s = name("strict")
    k.create_stream(StreamName=s, ShardCount=1)
    assert k.put_record(StreamName=s, Data=b"signed", PartitionKey="k")["SequenceNumber"]
    wrong = boto3.client("kinesis", endpoint_url=ENDPOINT, aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                         aws_secret_access_key="not-the-secret", config=Config(retries={"max_attempts": 1}))
    code, msg, _ = error_code(wrong.list_streams)
    assert code == "InvalidSignatureException" and "signature we calculated does not match" in msg, (code, msg)
    unknown = boto3.client("kinesis", endpoint_url=ENDPOINT, aws_access_key_id="AKIDUNKNOWN",
                           aws_secret_access_key="x", config=Config(retries={"max_attempts": 1}))
    code, _, _ = error_code(unknown.list_streams)
    assert code == "UnrecognizedClientException", code
    other_region = boto3.client("kinesis", endpoint_url=ENDPOINT, region_name="eu-west-1",
                                config=Config(retries={"max_attempts": 1}))
    code, _, _ = error_code(other_region.list_streams)
    assert code == "InvalidSignatureException", code
    unsigned = boto3.client("kinesis", endpoint_url=ENDPOINT, config=Config(signature_version=botocore.UNSIGNED, retries={"max_attempts": 1}))
    code, _, _ = error_code(unsigned.list_streams)
    assert code == "MissingAuthenticationTokenException", code


def case_stale_signature():
    """Run against a strict broker whose clock is 10 minutes ahead."""
    k = client(retries={"max_attempts": 1})
    code, msg, _ = error_code(k.list_streams)
    assert code == "InvalidSignatureException" and msg.startswith("Signature expired"), (code, msg)


if __name__ == "__main__":
    case = sys.argv[1]
    globals()[f"case_{case}"]()
    print(f"ok {case}")

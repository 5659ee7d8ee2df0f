#!/usr/bin/env bash
# The aws CLI (v1, from the test venv) against the broker's Kinesis API:
# stream lifecycle, waiter, put, iterator, get-records, paging and errors.
# Run by broker/tests/kinesis_awscli.rs with AWS_ENDPOINT_URL_KINESIS set.
set -euo pipefail
aws() { command aws --endpoint-url "$KINESIS_ENDPOINT" --output json "$@"; }
field() { python -c "import json,sys; v=json.load(sys.stdin); print(eval(sys.argv[1], {'v': v}))" "$1"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

s="cli-$RANDOM$RANDOM"
aws kinesis create-stream --stream-name "$s" --shard-count 2
aws kinesis wait stream-exists --stream-name "$s"
[ "$(aws kinesis describe-stream-summary --stream-name "$s" | field "v['StreamDescriptionSummary']['OpenShardCount']")" = 2 ] \
    || fail "two open shards"

# aws CLI v1 base64-encodes --data itself.
put=$(aws kinesis put-record --stream-name "$s" --partition-key order-1 --data '{"orderId":"order-1"}')
shard=$(echo "$put" | field "v['ShardId']")
seq=$(echo "$put" | field "v['SequenceNumber']")
aws kinesis put-records --stream-name "$s" --records \
    Data=b3JkZXI=,PartitionKey=order-1 Data=b3JkZXI=,PartitionKey=order-1 >/dev/null

it=$(aws kinesis get-shard-iterator --stream-name "$s" --shard-id "$shard" \
    --shard-iterator-type AT_SEQUENCE_NUMBER --starting-sequence-number "$seq" | field "v['ShardIterator']")
recs=$(aws kinesis get-records --shard-iterator "$it")
[ "$(echo "$recs" | field "len(v['Records'])")" = 3 ] || fail "three records from the first one: $recs"
[ "$(echo "$recs" | field "__import__('base64').b64decode(v['Records'][0]['Data']).decode()")" = '{"orderId":"order-1"}' ] \
    || fail "data round-trips: $recs"
[ "$(echo "$recs" | field "v['Records'][0]['SequenceNumber']")" = "$seq" ] || fail "sequence number"

# AT_TIMESTAMP in the CLI's own time syntax.
it=$(aws kinesis get-shard-iterator --stream-name "$s" --shard-id "$shard" \
    --shard-iterator-type AT_TIMESTAMP --timestamp 2020-01-01T00:00:00Z | field "v['ShardIterator']")
[ "$(aws kinesis get-records --shard-iterator "$it" | field "len(v['Records'])")" = 3 ] || fail "AT_TIMESTAMP"

[ "$(aws kinesis list-shards --stream-name "$s" | field "len(v['Shards'])")" = 2 ] || fail "list-shards"
# The CLI pages ListStreams by itself (Limit, then NextToken).
aws kinesis create-stream --stream-name "$s-b" --shard-count 1
[ "$(aws kinesis list-streams --page-size 1 | field "len([n for n in v['StreamNames'] if n.startswith('$s')])")" = 2 ] \
    || fail "list-streams paging"

aws kinesis add-tags-to-stream --stream-name "$s" --tags team=cakes
[ "$(aws kinesis list-tags-for-stream --stream-name "$s" | field "v['Tags'][0]['Value']")" = cakes ] || fail "tags"

# Errors: the CLI exits non-zero and names the AWS error.
if out=$(aws kinesis describe-stream --stream-name "missing-$s" 2>&1); then fail "describe of a missing stream"; fi
echo "$out" | grep -q ResourceNotFoundException || fail "ResourceNotFoundException: $out"

aws kinesis delete-stream --stream-name "$s"
aws kinesis wait stream-not-exists --stream-name "$s"
echo "ok awscli"

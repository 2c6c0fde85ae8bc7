#!/usr/bin/env bash
# Runs a Kafka command-line class from the local jars (the bin/kafka-*.sh equivalents), e.g.
#   deploy/local/kafka/tool.sh org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:19092 --list
#   deploy/local/kafka/tool.sh org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server ... --topic t --from-beginning
#   deploy/local/kafka/tool.sh org.apache.kafka.tools.ConsoleProducer / org.apache.kafka.tools.consumer.group.ConsumerGroupCommand
# ROOT is taken from HOOKSTREAM_ROOT (default: the repository root).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" "${HOOKSTREAM_ROOT:-}"
"$KAFKA_SCRIPT_DIR/fetch.sh" "$ROOT"
kafka_java "$@"

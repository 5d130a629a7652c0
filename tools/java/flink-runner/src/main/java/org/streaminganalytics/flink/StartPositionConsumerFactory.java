package org.streaminganalytics.flink;

import java.time.Duration;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.apache.beam.sdk.transforms.SerializableFunction;
import org.apache.kafka.clients.consumer.Consumer;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.TopicPartition;

/**
 * KafkaIO consumer factory that makes a fresh read start at the beginning or the end of each
 * partition even though the consumer has a {@code group.id} (needed to commit offsets) and the
 * group has committed offsets.
 *
 * <p>Why a factory: KafkaIO 2.62's {@code KafkaUnboundedReader.setupInitialOffset} {@code seek}s
 * to the checkpointed offset when it resumes, and otherwise asks {@code consumer.position(tp)},
 * which returns the group's committed offset when there is one ({@code auto.offset.reset} only
 * applies without one). {@code withStartReadTime} is no way out: it looks the offset up with
 * {@code offsetsForTimes}, and KafkaIO throws when a partition has no record at or after that time
 * (an empty partition for "earliest", every quiet partition for "latest" = now). So for "earliest"
 * and "latest" the consumer below turns the first {@code position(tp)} of a partition that was
 * never {@code seek}ed into {@code seekToBeginning}/{@code seekToEnd} + {@code position}: a
 * restored checkpoint (a {@code seek}) still wins, and "latest" is the end at the moment the reader
 * first starts. "committed" uses the plain consumer.
 */
final class StartPositionConsumerFactory
    implements SerializableFunction<Map<String, Object>, Consumer<byte[], byte[]>> {
  private static final long serialVersionUID = 1L;

  enum Start {
    COMMITTED,
    EARLIEST,
    LATEST
  }

  /** Prefix of an endpoint read from the environment (Python's {@code settings.worker_ref}). */
  static final String ENV_PREFIX = "env:";

  private final Start start;

  StartPositionConsumerFactory(Start start) {
    this.start = start;
  }

  @Override
  public Consumer<byte[], byte[]> apply(Map<String, Object> config) {
    Map<String, Object> resolved = withEnvironment(config);
    if (start == Start.COMMITTED) {
      return new KafkaConsumer<>(resolved);
    }
    return new StartPositionConsumer(resolved, start);
  }

  /**
   * {@code bootstrap.servers} given as {@code env:NAME} (a job built with {@code
   * --endpoints=workers}) is read from this process's environment variable NAME: the job jar holds
   * no endpoint, and each deployment's Flink pods say where their Kafka is. Every consumer KafkaIO
   * makes (partition listing on the JobManager, readers, offset and commit consumers on the
   * TaskManagers) comes from this factory.
   */
  static Map<String, Object> withEnvironment(Map<String, Object> config) {
    Object servers = config.get(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG);
    if (!(servers instanceof String) || !((String) servers).startsWith(ENV_PREFIX)) {
      return config;
    }
    String name = ((String) servers).substring(ENV_PREFIX.length());
    String value = System.getenv(name);
    if (value == null || value.isEmpty()) {
      throw new IllegalStateException(
          "Kafka bootstrap servers come from the environment variable "
              + name
              + " (the job was built with --endpoints=workers), but it is not set in this "
              + "Flink process");
    }
    Map<String, Object> resolved = new HashMap<>(config);
    resolved.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, value);
    return resolved;
  }

  /** Public: KafkaIO calls some consumer methods through SpEL (reflection). */
  public static final class StartPositionConsumer extends KafkaConsumer<byte[], byte[]> {
    private final Start start;
    private final Set<TopicPartition> positioned = new HashSet<>();

    StartPositionConsumer(Map<String, Object> config, Start start) {
      super(config);
      this.start = start;
    }

    @Override
    public void seek(TopicPartition partition, long offset) {
      positioned.add(partition);
      super.seek(partition, offset);
    }

    @Override
    public void seek(TopicPartition partition, OffsetAndMetadata offsetAndMetadata) {
      positioned.add(partition);
      super.seek(partition, offsetAndMetadata);
    }

    @Override
    public long position(TopicPartition partition) {
      applyStart(partition);
      return super.position(partition);
    }

    @Override
    public long position(TopicPartition partition, Duration timeout) {
      applyStart(partition);
      return super.position(partition, timeout);
    }

    private void applyStart(TopicPartition partition) {
      if (!positioned.add(partition)) {
        return;
      }
      if (start == Start.EARLIEST) {
        seekToBeginning(List.of(partition));
      } else {
        seekToEnd(List.of(partition));
      }
    }
  }
}

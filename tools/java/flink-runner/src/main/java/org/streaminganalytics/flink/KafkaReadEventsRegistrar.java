package org.streaminganalytics.flink;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Optional;
import org.apache.beam.sdk.coders.ByteArrayCoder;
import org.apache.beam.sdk.expansion.ExternalTransformRegistrar;
import org.apache.beam.sdk.io.kafka.KafkaIO;
import org.apache.beam.sdk.io.kafka.KafkaRecord;
import org.apache.beam.sdk.options.PipelineOptions;
import org.apache.beam.sdk.transforms.DoFn;
import org.apache.beam.sdk.transforms.ExternalTransformBuilder;
import org.apache.beam.sdk.transforms.PTransform;
import org.apache.beam.sdk.transforms.ParDo;
import org.apache.beam.sdk.values.PBegin;
import org.apache.beam.sdk.values.PCollection;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * Cross-language transform {@value #URN}: our Kafka read for Python pipelines on Flink.
 *
 * <p>Java KafkaIO (an {@code UnboundedSource} under {@code use_deprecated_read}, so the Flink runner
 * runs it as a native source with its reader checkpoint in operator state) with {@link
 * EventTimePolicy}, offsets committed to the group when a checkpoint is finalized, and every record
 * turned into bytes in the layout of Python's {@code transforms.kafka_source.KafkaRecordCoder}
 * (output coder {@code beam:coder:bytes:v1}: Python receives plain {@code bytes}).
 *
 * <p>Payload (a schema row; Beam's expansion service maps snake_case fields to the camelCase
 * setters of {@link Configuration}; Python ints arrive as int64): {@code bootstrap_servers},
 * {@code topic}, {@code group_id} (may be null: then no offsets are committed and "committed" means
 * "earliest"), {@code start} ("committed" | "earliest" | "latest"), {@code
 * max_out_of_orderness_ms}, {@code idle_timeout_ms} (&lt;= 0: no idle advancement), {@code
 * max_future_skew_ms}. Registered through {@code META-INF/services}.
 */
public final class KafkaReadEventsRegistrar implements ExternalTransformRegistrar {
  public static final String URN = "beam:transform:org.streaminganalytics:kafka_read_events:v1";

  @Override
  public Map<String, ExternalTransformBuilder<?, ?, ?>> knownBuilderInstances() {
    return Map.of(URN, new Builder());
  }

  /** The expansion payload; the defaults are those of Python's {@code KafkaSourceConfig}. */
  public static final class Configuration {
    private String bootstrapServers;
    private String topic;
    private String groupId;
    private String start = "committed";
    private Long maxOutOfOrdernessMs = 5_000L;
    private Long idleTimeoutMs = 5_000L;
    private Long maxFutureSkewMs = 60_000L;

    public void setBootstrapServers(String bootstrapServers) {
      this.bootstrapServers = bootstrapServers;
    }

    public void setTopic(String topic) {
      this.topic = topic;
    }

    public void setGroupId(String groupId) {
      this.groupId = groupId;
    }

    public void setStart(String start) {
      this.start = start;
    }

    public void setMaxOutOfOrdernessMs(Long maxOutOfOrdernessMs) {
      this.maxOutOfOrdernessMs = maxOutOfOrdernessMs;
    }

    public void setIdleTimeoutMs(Long idleTimeoutMs) {
      this.idleTimeoutMs = idleTimeoutMs;
    }

    public void setMaxFutureSkewMs(Long maxFutureSkewMs) {
      this.maxFutureSkewMs = maxFutureSkewMs;
    }
  }

  /** Builds {@link KafkaReadEvents} from a {@link Configuration}. */
  public static final class Builder
      implements ExternalTransformBuilder<Configuration, PBegin, PCollection<byte[]>> {
    @Override
    public PTransform<PBegin, PCollection<byte[]>> buildExternal(Configuration c) {
      return new KafkaReadEvents(c);
    }

    /**
     * No artifacts: the EMBEDDED environment runs on the TaskManager's own classpath (this jar).
     * Beam's default stages the expansion service's whole classpath, i.e. Python would copy this
     * ~200 MB jar out of the expansion service into a temp dir and up to the job server on every
     * pipeline construction.
     */
    @Override
    public Optional<List<String>> getDependencies(Configuration c, PipelineOptions options) {
      return Optional.of(List.of());
    }
  }

  /** The expanded transform: KafkaIO read, then records to bytes. */
  static final class KafkaReadEvents extends PTransform<PBegin, PCollection<byte[]>> {
    private final String bootstrapServers;
    private final String topic;
    private final String groupId;
    private final StartPositionConsumerFactory.Start start;
    private final EventTimePolicy.Factory policy;

    KafkaReadEvents(Configuration c) {
      this.bootstrapServers = required(c.bootstrapServers, "bootstrap_servers");
      this.topic = required(c.topic, "topic");
      this.groupId = c.groupId == null || c.groupId.isEmpty() ? null : c.groupId;
      String startName = required(c.start, "start");
      try {
        this.start = StartPositionConsumerFactory.Start.valueOf(startName.toUpperCase(Locale.ROOT));
      } catch (IllegalArgumentException e) {
        throw new IllegalArgumentException(
            "start=" + startName + "; expected one of committed, earliest, latest", e);
      }
      this.policy =
          new EventTimePolicy.Factory(
              required(c.maxOutOfOrdernessMs, "max_out_of_orderness_ms"),
              required(c.idleTimeoutMs, "idle_timeout_ms"),
              required(c.maxFutureSkewMs, "max_future_skew_ms"));
    }

    @Override
    public PCollection<byte[]> expand(PBegin input) {
      Map<String, Object> consumerConfig = new HashMap<>();
      // KafkaIO commits with the reader's own consumer; our checkpoints are the position, the
      // group's offsets are for start="committed" and for lag monitoring.
      consumerConfig.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
      // Where a fresh "committed" read starts without a committed offset, and where any read
      // continues when its offset fell out of retention (the least data lost).
      consumerConfig.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
      StartPositionConsumerFactory.Start effectiveStart = start;
      if (groupId != null) {
        consumerConfig.put(ConsumerConfig.GROUP_ID_CONFIG, groupId);
      } else if (start == StartPositionConsumerFactory.Start.COMMITTED) {
        effectiveStart = StartPositionConsumerFactory.Start.EARLIEST; // as the Python reader
      }

      KafkaIO.Read<byte[], byte[]> read =
          KafkaIO.<byte[], byte[]>read()
              .withBootstrapServers(bootstrapServers)
              .withTopic(topic)
              .withKeyDeserializer(ByteArrayDeserializer.class)
              .withValueDeserializer(ByteArrayDeserializer.class)
              .withConsumerConfigUpdates(consumerConfig)
              .withConsumerFactoryFn(new StartPositionConsumerFactory(effectiveStart))
              .withTimestampPolicyFactory(policy);
      if (groupId != null) {
        read = read.commitOffsetsInFinalize();
      }
      // Not withoutMetadata(): topic, partition, offset and Kafka timestamp travel to Python.
      return input
          .apply("ReadFromKafka", read)
          .apply("ToRecordBytes", ParDo.of(new ToRecordBytes()))
          .setCoder(ByteArrayCoder.of());
    }

    private static <T> T required(T value, String field) {
      if (value == null) {
        throw new IllegalArgumentException(URN + ": payload field " + field + " is required");
      }
      return value;
    }
  }

  /** Each record in the layout of Python's {@code KafkaRecordCoder}; keeps its timestamp. */
  static final class ToRecordBytes extends DoFn<KafkaRecord<byte[], byte[]>, byte[]> {
    @ProcessElement
    public void process(@Element KafkaRecord<byte[], byte[]> r, OutputReceiver<byte[]> out) {
      out.output(
          encode(
              r.getTopic(),
              r.getPartition(),
              r.getOffset(),
              r.getTimestamp(),
              r.getKV().getKey(),
              r.getKV().getValue()));
    }
  }

  /**
   * Big-endian: uint16 topic length, topic UTF-8, int32 partition, int64 offset, int64 Kafka
   * timestamp (-1: none), int32 key length (-1: null key), int32 value length (-1: null value), key
   * bytes, value bytes. Python: {@code KafkaRecordCoder.decode}.
   */
  static byte[] encode(
      String topic, int partition, long offset, long timestampMs, byte[] key, byte[] value) {
    byte[] topicBytes = topic.getBytes(StandardCharsets.UTF_8);
    if (topicBytes.length > 0xFFFF) {
      throw new IllegalArgumentException("topic name longer than 65535 bytes");
    }
    int keyLength = key == null ? 0 : key.length;
    int valueLength = value == null ? 0 : value.length;
    ByteBuffer b =
        ByteBuffer.allocate(2 + topicBytes.length + 4 + 8 + 8 + 4 + 4 + keyLength + valueLength);
    b.putShort((short) topicBytes.length);
    b.put(topicBytes);
    b.putInt(partition);
    b.putLong(offset);
    b.putLong(timestampMs < 0 ? -1 : timestampMs);
    b.putInt(key == null ? -1 : key.length);
    b.putInt(value == null ? -1 : value.length);
    if (key != null) {
      b.put(key);
    }
    if (value != null) {
      b.put(value);
    }
    return b.array();
  }
}

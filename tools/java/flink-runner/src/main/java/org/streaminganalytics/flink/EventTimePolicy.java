package org.streaminganalytics.flink;

import java.nio.charset.StandardCharsets;
import java.util.Optional;
import java.util.concurrent.TimeUnit;
import java.util.function.LongSupplier;
import org.apache.beam.sdk.io.kafka.KafkaRecord;
import org.apache.beam.sdk.io.kafka.TimestampPolicy;
import org.apache.beam.sdk.io.kafka.TimestampPolicyFactory;
import org.apache.beam.sdk.transforms.windowing.BoundedWindow;
import org.apache.kafka.common.TopicPartition;
import org.joda.time.Instant;

/**
 * Event-time timestamps and a bounded-out-of-orderness watermark for one Kafka partition: the Java
 * twin of the Python reader in {@code transforms/kafka_source.py} ({@code KafkaPartitionReader.advance}
 * / {@code get_watermark} and {@code event_time_from_payload}). Keep the two in step.
 *
 * <ul>
 *   <li>A record's timestamp is {@code event_time_ms} scanned from the value bytes (no JSON parse),
 *       else the Kafka record timestamp when it is {@code >= 0}, else 0.
 *   <li>The partition's max event time moves only when a record's event time exceeds it, and then
 *       at most to {@code now + maxFutureSkewMs}: a broken producer clock cannot drag the watermark
 *       into the future.
 *   <li>Watermark = max event time − {@code maxOutOfOrdernessMs} (never below the epoch, like the
 *       Python reader); before any record, {@link BoundedWindow#TIMESTAMP_MIN_VALUE}. When {@code
 *       idleTimeoutMs > 0} and the partition is caught up (backlog 0) and no record arrived for
 *       {@code idleTimeoutMs}, at least {@code now − maxOutOfOrdernessMs}. It never goes backwards.
 *   <li>After a restore, the max event time resumes from the checkpointed watermark plus the bound,
 *       so the watermark does not regress.
 * </ul>
 *
 * <p>KafkaIO calls a policy from the reader only (under the runner's checkpoint lock), so it needs
 * no synchronization of its own.
 */
public final class EventTimePolicy extends TimestampPolicy<byte[], byte[]> {
  private static final byte[] TIME_FIELD = "\"event_time_ms\"".getBytes(StandardCharsets.US_ASCII);
  private static final int MAX_DIGITS = 15;
  private static final long NONE = -1;

  private final long maxOutOfOrdernessMs;
  private final long idleTimeoutMs;
  private final long maxFutureSkewMs;
  private final LongSupplier wallClockMs;
  private final LongSupplier monotonicMs;

  /** Highest (capped) event time seen, or {@link #NONE}: the Python reader's {@code _max_event_ms}. */
  private long maxEventMs = NONE;
  /** Monotonic time of the last record (or of the policy's creation). */
  private long lastRecordAtMs;
  /** The watermark last returned, in millis, or {@link #NONE} before the first real one. */
  private long lastWatermarkMs = NONE;

  EventTimePolicy(
      long maxOutOfOrdernessMs,
      long idleTimeoutMs,
      long maxFutureSkewMs,
      Optional<Instant> previousWatermark,
      LongSupplier wallClockMs,
      LongSupplier monotonicMs) {
    if (maxOutOfOrdernessMs < 0) {
      throw new IllegalArgumentException("maxOutOfOrdernessMs must be >= 0");
    }
    this.maxOutOfOrdernessMs = maxOutOfOrdernessMs;
    this.idleTimeoutMs = idleTimeoutMs;
    this.maxFutureSkewMs = maxFutureSkewMs;
    this.wallClockMs = wallClockMs;
    this.monotonicMs = monotonicMs;
    this.lastRecordAtMs = monotonicMs.getAsLong();
    // Our watermarks are never below the epoch, so a negative one is "no record was seen yet"
    // (TIMESTAMP_MIN_VALUE); only a real one carries the position of the event-time clock.
    if (previousWatermark.isPresent() && previousWatermark.get().getMillis() >= 0) {
      long previous = previousWatermark.get().getMillis();
      this.maxEventMs = previous + maxOutOfOrdernessMs;
      this.lastWatermarkMs = previous;
    }
  }

  /**
   * {@code event_time_ms} of a JSON event without parsing the document: the first occurrence of
   * {@code "event_time_ms"}, then any of space/tab/CR/LF/colon, then 1–15 ASCII digits not followed
   * by another digit nor by {@code .}, {@code e} or {@code E}. Null when absent or malformed (then
   * the caller falls back to the Kafka timestamp). Same result as Python's {@code
   * transforms.kafka_source.event_time_from_payload} for every input.
   */
  public static Long eventTimeFromPayload(byte[] value) {
    if (value == null || value.length == 0) {
      return null;
    }
    int at = indexOf(value, TIME_FIELD);
    if (at < 0) {
      return null;
    }
    int i = at + TIME_FIELD.length;
    while (i < value.length && isSeparator(value[i])) {
      i++;
    }
    int start = i;
    long result = 0;
    while (i < value.length && isDigit(value[i])) {
      if (i - start == MAX_DIGITS) {
        return null; // a 16th digit: too long for the pattern
      }
      result = result * 10 + (value[i] - '0');
      i++;
    }
    if (i == start) {
      return null;
    }
    if (i < value.length && (value[i] == '.' || value[i] == 'e' || value[i] == 'E')) {
      return null; // a float
    }
    return result;
  }

  @Override
  public Instant getTimestampForRecord(PartitionContext ctx, KafkaRecord<byte[], byte[]> record) {
    lastRecordAtMs = monotonicMs.getAsLong();
    Long scanned = eventTimeFromPayload(record.getKV().getValue());
    long eventMs;
    if (scanned != null) {
      eventMs = scanned;
    } else {
      eventMs = record.getTimestamp() >= 0 ? record.getTimestamp() : 0;
    }
    if (eventMs > maxEventMs) {
      // Only a record past the maximum can move it, so only then the clock is read.
      long horizonMs = wallClockMs.getAsLong() + maxFutureSkewMs;
      maxEventMs = Math.max(maxEventMs, Math.min(eventMs, horizonMs));
    }
    return new Instant(eventMs);
  }

  @Override
  public Instant getWatermark(PartitionContext ctx) {
    long watermarkMs = maxEventMs >= 0 ? maxEventMs - maxOutOfOrdernessMs : NONE;
    boolean hasWatermark = maxEventMs >= 0;
    if (idleTimeoutMs > 0
        && ctx.getMessageBacklog() == 0
        && monotonicMs.getAsLong() - lastRecordAtMs >= idleTimeoutMs) {
      long idleMs = wallClockMs.getAsLong() - maxOutOfOrdernessMs;
      watermarkMs = hasWatermark ? Math.max(watermarkMs, idleMs) : idleMs;
      hasWatermark = true;
    }
    if (hasWatermark) {
      lastWatermarkMs = Math.max(lastWatermarkMs, Math.max(watermarkMs, 0));
    }
    return lastWatermarkMs == NONE ? BoundedWindow.TIMESTAMP_MIN_VALUE : new Instant(lastWatermarkMs);
  }

  private static boolean isSeparator(byte b) {
    return b == ' ' || b == '\t' || b == '\r' || b == '\n' || b == ':';
  }

  private static boolean isDigit(byte b) {
    return b >= '0' && b <= '9';
  }

  private static int indexOf(byte[] haystack, byte[] needle) {
    int last = haystack.length - needle.length;
    outer:
    for (int i = 0; i <= last; i++) {
      for (int j = 0; j < needle.length; j++) {
        if (haystack[i + j] != needle[j]) {
          continue outer;
        }
      }
      return i;
    }
    return -1;
  }

  /** Creates one {@link EventTimePolicy} per partition; serialized into the KafkaIO source. */
  public static final class Factory implements TimestampPolicyFactory<byte[], byte[]> {
    private static final long serialVersionUID = 1L;

    private final long maxOutOfOrdernessMs;
    private final long idleTimeoutMs;
    private final long maxFutureSkewMs;

    public Factory(long maxOutOfOrdernessMs, long idleTimeoutMs, long maxFutureSkewMs) {
      if (maxOutOfOrdernessMs < 0) {
        throw new IllegalArgumentException("max_out_of_orderness_ms must be >= 0");
      }
      this.maxOutOfOrdernessMs = maxOutOfOrdernessMs;
      this.idleTimeoutMs = idleTimeoutMs;
      this.maxFutureSkewMs = maxFutureSkewMs;
    }

    @Override
    public TimestampPolicy<byte[], byte[]> createTimestampPolicy(
        TopicPartition tp, Optional<Instant> previousWatermark) {
      return new EventTimePolicy(
          maxOutOfOrdernessMs,
          idleTimeoutMs,
          maxFutureSkewMs,
          previousWatermark,
          System::currentTimeMillis,
          () -> TimeUnit.NANOSECONDS.toMillis(System.nanoTime()));
    }
  }
}

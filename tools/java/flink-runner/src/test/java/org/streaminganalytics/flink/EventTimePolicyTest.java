package org.streaminganalytics.flink;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.Optional;
import org.apache.beam.sdk.io.kafka.KafkaRecord;
import org.apache.beam.sdk.io.kafka.KafkaTimestampType;
import org.apache.beam.sdk.io.kafka.TimestampPolicy.PartitionContext;
import org.apache.beam.sdk.transforms.windowing.BoundedWindow;
import org.joda.time.Instant;
import org.junit.Test;

public class EventTimePolicyTest {
  /** A settable clock (wall and monotonic alike) and backlog. */
  private long nowMs = 1_000_000;

  private long backlog = 5;

  private final PartitionContext ctx =
      new PartitionContext() {
        @Override
        public long getMessageBacklog() {
          return backlog;
        }

        @Override
        public Instant getBacklogCheckTime() {
          return new Instant(nowMs);
        }
      };

  private EventTimePolicy policy(long bound, long idle, long skew, Optional<Instant> previous) {
    return new EventTimePolicy(bound, idle, skew, previous, () -> nowMs, () -> nowMs);
  }

  private static Long scan(String s) {
    return EventTimePolicy.eventTimeFromPayload(s.getBytes(StandardCharsets.UTF_8));
  }

  private static KafkaRecord<byte[], byte[]> record(String value, long kafkaTs) {
    return new KafkaRecord<>(
        "t",
        0,
        0,
        kafkaTs,
        KafkaTimestampType.CREATE_TIME,
        null,
        null,
        value == null ? null : value.getBytes(StandardCharsets.UTF_8));
  }

  @Test
  public void scansLikeThePythonFunction() {
    assertEquals(Long.valueOf(123), scan("{\"event_time_ms\":123}"));
    assertEquals(Long.valueOf(123), scan("{\"event_time_ms\" : \t\r\n 123,\"x\":1}"));
    assertEquals(Long.valueOf(999_999_999_999_999L), scan("{\"event_time_ms\":999999999999999}"));
    assertNull(scan("{\"event_time_ms\":1234567890123456}")); // 16 digits
    assertNull(scan("{\"event_time_ms\":12.5}"));
    assertNull(scan("{\"event_time_ms\":12e3}"));
    assertNull(scan("{\"event_time_ms\":12E3}"));
    assertNull(scan("{\"event_time_ms\":\"12\"}"));
    assertNull(scan("{\"event_time_ms\":null}"));
    assertNull(scan("{\"event_time_ms\":-5}"));
    assertNull(scan("{\"event_time_ms\":}"));
    assertNull(scan("{\"event_time_ms\""));
    assertNull(scan("{\"other\":5}"));
    assertNull(scan(""));
    assertNull(EventTimePolicy.eventTimeFromPayload(null));
    // Only the first occurrence counts.
    assertNull(scan("{\"event_time_ms\":\"x\",\"event_time_ms\":5}"));
    // Digits followed by anything else end the number.
    assertEquals(Long.valueOf(7), scan("{\"event_time_ms\":7}"));
    assertEquals(Long.valueOf(7), scan("\"event_time_ms\"7x"));
    assertEquals(Long.valueOf(0), scan("\"event_time_ms\"::0"));
  }

  @Test
  public void timestampFallsBackToKafkaTimestampThenZero() {
    EventTimePolicy p = policy(0, 0, 60_000, Optional.empty());
    assertEquals(new Instant(42), p.getTimestampForRecord(ctx, record("{\"event_time_ms\":42}", 7)));
    assertEquals(new Instant(7), p.getTimestampForRecord(ctx, record("{}", 7)));
    assertEquals(new Instant(0), p.getTimestampForRecord(ctx, record(null, -1)));
  }

  @Test
  public void watermarkIsMaxEventMinusBoundAndNeverRegresses() {
    EventTimePolicy p = policy(5_000, 0, 60_000, Optional.empty());
    assertEquals(BoundedWindow.TIMESTAMP_MIN_VALUE, p.getWatermark(ctx));
    p.getTimestampForRecord(ctx, record("{\"event_time_ms\":500000}", 1));
    assertEquals(new Instant(495_000), p.getWatermark(ctx));
    p.getTimestampForRecord(ctx, record("{\"event_time_ms\":400000}", 1)); // out of order
    assertEquals(new Instant(495_000), p.getWatermark(ctx));
    p.getTimestampForRecord(ctx, record("{\"event_time_ms\":510000}", 1));
    assertEquals(new Instant(505_000), p.getWatermark(ctx));
  }

  @Test
  public void watermarkIsNeverBelowTheEpoch() {
    EventTimePolicy p = policy(5_000, 0, 60_000, Optional.empty());
    p.getTimestampForRecord(ctx, record(null, -1)); // event time 0
    assertEquals(new Instant(0), p.getWatermark(ctx));
  }

  @Test
  public void futureEventsAdvanceTheWatermarkOnlyToTheHorizon() {
    EventTimePolicy p = policy(1_000, 0, 60_000, Optional.empty());
    long future = nowMs + 3_600_000;
    assertEquals(
        new Instant(future),
        p.getTimestampForRecord(ctx, record("{\"event_time_ms\":" + future + "}", 1)));
    assertEquals(new Instant(nowMs + 60_000 - 1_000), p.getWatermark(ctx));
    // The clock moves on: the same record would now count further, but only a newer one moves it.
    nowMs += 10_000;
    assertEquals(new Instant(nowMs - 10_000 + 59_000), p.getWatermark(ctx));
    p.getTimestampForRecord(ctx, record("{\"event_time_ms\":" + future + "}", 1));
    assertEquals(new Instant(nowMs + 59_000), p.getWatermark(ctx));
  }

  @Test
  public void idlePartitionAdvancesWithTheClockOnlyWhenCaughtUp() {
    EventTimePolicy p = policy(5_000, 2_000, 60_000, Optional.empty());
    p.getTimestampForRecord(ctx, record("{\"event_time_ms\":100000}", 1));
    nowMs += 3_000;
    backlog = 5;
    assertEquals(new Instant(95_000), p.getWatermark(ctx)); // not caught up
    backlog = -1;
    assertEquals(new Instant(95_000), p.getWatermark(ctx)); // backlog unknown
    backlog = 0;
    assertEquals(new Instant(nowMs - 5_000), p.getWatermark(ctx));
    // A late record after the idle advance: the watermark stays.
    long idleWatermark = nowMs - 5_000;
    p.getTimestampForRecord(ctx, record("{\"event_time_ms\":200000}", 1));
    assertEquals(new Instant(idleWatermark), p.getWatermark(ctx));
  }

  @Test
  public void idleAdvanceDisabledByNonPositiveTimeout() {
    EventTimePolicy p = policy(5_000, 0, 60_000, Optional.empty());
    backlog = 0;
    nowMs += 100_000;
    assertEquals(BoundedWindow.TIMESTAMP_MIN_VALUE, p.getWatermark(ctx));
  }

  @Test
  public void idleWithoutAnyRecordStartsFromCreation() {
    EventTimePolicy p = policy(5_000, 2_000, 60_000, Optional.empty());
    backlog = 0;
    assertEquals(BoundedWindow.TIMESTAMP_MIN_VALUE, p.getWatermark(ctx));
    nowMs += 2_000;
    assertEquals(new Instant(nowMs - 5_000), p.getWatermark(ctx));
  }

  @Test
  public void restoreResumesFromThePreviousWatermark() {
    EventTimePolicy p = policy(5_000, 0, 60_000, Optional.of(new Instant(495_000)));
    assertEquals(new Instant(495_000), p.getWatermark(ctx));
    p.getTimestampForRecord(ctx, record("{\"event_time_ms\":499000}", 1)); // below max: no move
    assertEquals(new Instant(495_000), p.getWatermark(ctx));
    p.getTimestampForRecord(ctx, record("{\"event_time_ms\":501000}", 1));
    assertEquals(new Instant(496_000), p.getWatermark(ctx));
    // A checkpoint taken before any record carries TIMESTAMP_MIN_VALUE: nothing to resume.
    EventTimePolicy fresh =
        policy(5_000, 0, 60_000, Optional.of(new Instant(BoundedWindow.TIMESTAMP_MIN_VALUE.getMillis())));
    assertEquals(BoundedWindow.TIMESTAMP_MIN_VALUE, fresh.getWatermark(ctx));
  }

  @Test
  public void encodesInThePythonCoderLayout() {
    byte[] b =
        KafkaReadEventsRegistrar.encode(
            "events", 3, 42L, 1_700_000_000_000L, null, "{}".getBytes(StandardCharsets.UTF_8));
    ByteBuffer buf = ByteBuffer.wrap(b);
    assertEquals(6, buf.getShort());
    byte[] topic = new byte[6];
    buf.get(topic);
    assertEquals("events", new String(topic, StandardCharsets.UTF_8));
    assertEquals(3, buf.getInt());
    assertEquals(42L, buf.getLong());
    assertEquals(1_700_000_000_000L, buf.getLong());
    assertEquals(-1, buf.getInt());
    assertEquals(2, buf.getInt());
    assertEquals('{', buf.get());
    assertEquals('}', buf.get());
    assertEquals(0, buf.remaining());
    byte[] noTs = KafkaReadEventsRegistrar.encode("t", 0, 0, -5, new byte[0], null);
    ByteBuffer n = ByteBuffer.wrap(noTs);
    n.position(2 + 1 + 4 + 8);
    assertEquals(-1L, n.getLong());
    assertEquals(0, n.getInt());
    assertEquals(-1, n.getInt());
  }
}

package org.streaminganalytics.flink;

import java.util.Arrays;
import org.apache.beam.sdk.expansion.service.ExpansionServer;
import org.apache.beam.sdk.expansion.service.ExpansionService;
import org.apache.beam.sdk.expansion.service.ExpansionServiceOptions;
import org.apache.beam.sdk.options.PipelineOptionsFactory;

/**
 * Beam's Java expansion service (with our {@link KafkaReadEventsRegistrar} and Beam's own
 * transforms), bound to 127.0.0.1 only.
 *
 * <p>Beam's stock {@code ExpansionService.main} binds every interface: an unauthenticated port that
 * builds pipelines. Usage: {@code java -cp THE_JAR org.streaminganalytics.flink.LoopbackExpansionServer
 * PORT [pipeline options...]}, e.g. {@code 18097 --defaultEnvironmentType=EMBEDDED
 * --experiments=use_deprecated_read}. The options are the expansion's own: the experiment must be
 * given here (not only to the Python pipeline) for KafkaIO to expand to {@code Read.Unbounded}.
 *
 * <p>Prints one line {@code expansion service listening on 127.0.0.1:PORT} to stdout once it
 * accepts connections, then blocks until the process is killed.
 */
public final class LoopbackExpansionServer {
  static final String HOST = "127.0.0.1";
  private static final long CLOSE_TIMEOUT_MS = 5_000;

  private LoopbackExpansionServer() {}

  public static void main(String[] args) throws Exception {
    if (args.length < 1) {
      System.err.println(
          "usage: LoopbackExpansionServer PORT [--defaultEnvironmentType=EMBEDDED"
              + " --experiments=use_deprecated_read ...]");
      System.exit(2);
    }
    int port = Integer.parseInt(args[0]);
    // Like Beam's own main: lets the expansion-service-specific options be given too.
    PipelineOptionsFactory.register(ExpansionServiceOptions.class);
    ExpansionService service = new ExpansionService(Arrays.copyOfRange(args, 1, args.length));
    ExpansionServer server = ExpansionServer.create(service, HOST, port);

    // On SIGTERM: close within a bound. ExpansionServer.close() ends in an unbounded
    // awaitTermination() that was seen to hang after a client had connected; the process keeps
    // no state, so exiting without a clean close is fine.
    Runtime.getRuntime()
        .addShutdownHook(
            new Thread(
                () -> {
                  Thread closer =
                      new Thread(
                          () -> {
                            try {
                              server.close();
                            } catch (Exception e) {
                              System.err.println("closing the expansion service: " + e);
                            }
                          },
                          "expansion-server-close");
                  closer.setDaemon(true);
                  closer.start();
                  try {
                    closer.join(CLOSE_TIMEOUT_MS);
                  } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                  }
                },
                "expansion-server-shutdown"));

    System.out.println("expansion service listening on " + HOST + ":" + server.getPort());
    System.out.flush();
    Thread.currentThread().join(); // until the process is killed
  }
}

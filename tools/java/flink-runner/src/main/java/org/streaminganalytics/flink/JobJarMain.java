/*
 * Main class of our portable job jars: Beam's FlinkPipelineRunner.main, reading the pipeline
 * through the job jar's own class loader.
 */
package org.streaminganalytics.flink;

import java.io.FileNotFoundException;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.util.Collections;
import java.util.UUID;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.apache.beam.model.jobmanagement.v1.ArtifactApi;
import org.apache.beam.model.pipeline.v1.RunnerApi;
import org.apache.beam.model.pipeline.v1.RunnerApi.Pipeline;
import org.apache.beam.runners.flink.FlinkPipelineOptions;
import org.apache.beam.runners.flink.FlinkPipelineRunner;
import org.apache.beam.runners.fnexecution.provisioning.JobInfo;
import org.apache.beam.sdk.io.FileSystems;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.sdk.util.construction.PipelineOptionsTranslation;
import org.apache.beam.vendor.grpc.v1p60p1.com.google.protobuf.Message;
import org.apache.beam.vendor.grpc.v1p60p1.com.google.protobuf.Struct;
import org.apache.beam.vendor.grpc.v1p60p1.com.google.protobuf.util.JsonFormat;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Runs the Beam pipeline packed in this job jar ({@code BEAM-PIPELINE/...}) on the Flink cluster
 * whose client runs the jar ({@code flink run}, the REST API's jar run, a FlinkDeployment).
 *
 * <p>Why not Beam's {@code FlinkPipelineRunner.main}: our clusters keep Beam's runner in Flink's
 * {@code lib/}, loaded parent-first (one copy of its classes for every job: no metaspace leak per
 * submission), and the job jar carries only this class and the pipeline. Beam's main finds the
 * pipeline through the class loader of {@code PortablePipelineJarUtils}, which is then lib/'s and
 * cannot see the job jar. This class is never in lib/ (make_lib_jar.py leaves it out), so its own
 * class loader is the job jar's; everything else is the runner's public API.
 */
public final class JobJarMain {
  private static final Logger LOG = LoggerFactory.getLogger(JobJarMain.class);
  private static final String FOLDER = "BEAM-PIPELINE";
  private static final Pattern DEFAULT_JOB_NAME =
      Pattern.compile("\"defaultJobName\"\\s*:\\s*\"([^\"]+)\"");

  private JobJarMain() {}

  public static void main(String[] args) throws Exception {
    FileSystems.setDefaultPipelineOptions(PipelineOptionsFactory.create());
    String jobName = args.length > 0 ? args[0] : defaultJobName();
    Pipeline.Builder pipeline = Pipeline.newBuilder();
    parseJson(FOLDER + "/" + jobName + "/pipeline.json", pipeline);
    Struct.Builder options = Struct.newBuilder();
    parseJson(FOLDER + "/" + jobName + "/pipeline-options.json", options);

    FlinkPipelineOptions flinkOptions =
        PipelineOptionsTranslation.fromProto(options.build()).as(FlinkPipelineOptions.class);
    String invocationId = flinkOptions.getJobName() + "_" + UUID.randomUUID();
    // Only the legacy artifact service needs a retrieval token; this is Beam's "none staged".
    String retrievalToken =
        ArtifactApi.CommitManifestResponse.Constants.NO_ARTIFACTS_STAGED_TOKEN
            .getValueDescriptor()
            .getOptions()
            .getExtension(RunnerApi.beamConstant);
    JobInfo jobInfo =
        JobInfo.create(
            invocationId,
            flinkOptions.getJobName(),
            retrievalToken,
            PipelineOptionsTranslation.toProto(flinkOptions));
    LOG.info("running the Beam pipeline {} of this jar as {}", jobName, invocationId);
    new FlinkPipelineRunner(flinkOptions, null, Collections.emptyList())
        .run(pipeline.build(), jobInfo);
  }

  private static String defaultJobName() throws IOException {
    String manifest = read(FOLDER + "/pipeline-manifest.json");
    Matcher m = DEFAULT_JOB_NAME.matcher(manifest);
    if (!m.find()) {
      throw new IllegalStateException("no defaultJobName in " + FOLDER + "/pipeline-manifest.json");
    }
    return m.group(1);
  }

  private static void parseJson(String resource, Message.Builder builder) throws IOException {
    JsonFormat.parser().merge(read(resource), builder);
  }

  private static String read(String resource) throws IOException {
    try (InputStream in = JobJarMain.class.getClassLoader().getResourceAsStream(resource)) {
      if (in == null) {
        throw new FileNotFoundException(resource + " is not in this job jar");
      }
      return new String(in.readAllBytes(), StandardCharsets.UTF_8);
    }
  }
}

#!/usr/bin/env python3
"""Cut the "lib" jar for a Flink cluster's lib/ directory out of the shaded runner jar.

    make_lib_jar.py SHADED_JAR FLINK_LIB_DIR OUTPUT_JAR [--job-base JOB_BASE_JAR]

Why: with Beam's runner and KafkaIO inside every job jar, the TaskManager leaks ~52 MB of
metaspace per submitted job (gRPC threads pin the job's classloader). With them in Flink's lib/
and ``classloader.resolve-order: parent-first`` it does not (../shared/STACK-NOTES.md). But lib/
is also the JobManager's classpath, and a second copy of a class Flink already has breaks it (an
unfiltered lib jar failed with a snakeyaml-engine NoSuchMethodError). So the lib jar is the shaded
jar minus:

* every ``org/apache/flink/**`` entry: the cluster's own Flink is the one to run;
* every class or resource that a jar in FLINK_LIB_DIR already contains (same entry name);
* the manifest (no Main-Class in lib/) and signature files;
* the main class of our job jars, ``JobJarMain`` (KEEP_IN_JOB_JAR): it reads ``BEAM-PIPELINE/...``
  through its own class loader, which must be the job jar's. (Beam's own ``FlinkPipelineRunner``
  main cannot be used with a runner in lib/: its ``PortablePipelineJarUtils`` looks through lib/'s
  loader and finds no pipeline, and leaving those two classes out of lib/ splits the runner's
  package across two loaders — ``IllegalAccessError`` on its package-private classes.)

With ``--job-base OUT`` it also writes the base of every job jar: ``JobJarMain`` alone, with it as
the manifest's Main-Class. The launcher adds the pipeline (``pipelines/job_jar.py``); the job jar
then weighs kilobytes instead of the whole runner, and a cluster keeps one copy of the runner.

``META-INF/services`` files are kept, since ServiceLoader reads them from every jar, but only
with the providers whose class stays in this jar: a provider that Flink's own jars carry is
registered by their service files already, and listing it twice makes some of Flink's
discoveries fail on duplicates. Standard library only.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

FLINK_PREFIX = "org/apache/flink/"
SERVICES = "META-INF/services/"
ALWAYS_DROPPED = {"META-INF/MANIFEST.MF", "META-INF/INDEX.LIST"}
KEEP_IN_JOB_JAR = ("org/streaminganalytics/flink/JobJarMain",)
JOB_MAIN_CLASS = "org.streaminganalytics.flink.JobJarMain"
MANIFEST = "Manifest-Version: 1.0\r\nCreated-By: make_lib_jar.py\r\n\r\n"


def flink_entries(lib_dir: Path) -> set[str]:
    """Names of the files (not directories) in the jars directly under lib_dir."""
    jars = sorted(lib_dir.glob("*.jar"))
    if not jars:
        raise SystemExit(f"make_lib_jar: no jars in {lib_dir}")
    names: set[str] = set()
    for jar in jars:
        with zipfile.ZipFile(jar) as z:
            names.update(n for n in z.namelist() if not n.endswith("/"))
    return names


def is_flink(name: str) -> bool:
    if name.startswith("META-INF/versions/"):  # multi-release copies: META-INF/versions/N/org/...
        name = name.split("/", 3)[3] if name.count("/") >= 3 else name
    return name.startswith(FLINK_PREFIX)


def is_signature(name: str) -> bool:
    return name.startswith("META-INF/") and name.count("/") == 1 and name.upper().endswith(
        (".SF", ".DSA", ".RSA", ".EC"))


def kept_in_job_jar(name: str) -> bool:
    """A class (or nested class) of KEEP_IN_JOB_JAR."""
    return any(name == p + ".class" or name.startswith(p + "$") for p in KEEP_IN_JOB_JAR)


def service_providers(text: str) -> list[str]:
    """Provider class names of a service file (comments and blank lines dropped)."""
    return [line.split("#", 1)[0].strip() for line in text.splitlines()
            if line.split("#", 1)[0].strip()]


def make_lib_jar(shaded: Path, lib_dir: Path, output: Path) -> dict[str, int]:
    in_flink = flink_entries(lib_dir)
    stats = {"kept": 0, "flink": 0, "in_flink_lib": 0, "job_jar_only": 0, "providers_dropped": 0}
    with zipfile.ZipFile(shaded) as src:
        names = [n for n in src.namelist() if not n.endswith("/")]
        kept: list[str] = []
        for name in names:
            if name in ALWAYS_DROPPED or is_signature(name):
                continue
            if name.startswith(SERVICES):
                kept.append(name)  # filtered below, once the kept classes are known
            elif is_flink(name):
                stats["flink"] += 1
            elif name in in_flink:
                stats["in_flink_lib"] += 1
            elif kept_in_job_jar(name):
                stats["job_jar_only"] += 1
            else:
                kept.append(name)
        kept_set = set(kept)

        tmp = output.with_name(output.name + ".tmp")
        output.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
            out.writestr("META-INF/MANIFEST.MF", MANIFEST)
            written_dirs = {"META-INF/"}
            for name in kept:
                data = src.read(name)
                if name.startswith(SERVICES):
                    providers = service_providers(data.decode("utf-8"))
                    ours = [p for p in providers if p.replace(".", "/") + ".class" in kept_set]
                    stats["providers_dropped"] += len(providers) - len(ours)
                    if not ours:
                        continue
                    data = ("\n".join(ours) + "\n").encode("utf-8")
                # Directory entries first: some code lists packages through them.
                parts = name.split("/")[:-1]
                for i in range(1, len(parts) + 1):
                    d = "/".join(parts[:i]) + "/"
                    if d not in written_dirs:
                        out.writestr(zipfile.ZipInfo(d), b"")
                        written_dirs.add(d)
                info = zipfile.ZipInfo(name, date_time=src.getinfo(name).date_time)
                out.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
                stats["kept"] += 1
        tmp.replace(output)
    return stats


def make_job_base_jar(shaded: Path, output: Path) -> int:
    """The classes of KEEP_IN_JOB_JAR with Main-Class JOB_MAIN_CLASS; returns the class count."""
    tmp = output.with_name(output.name + ".tmp")
    output.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with zipfile.ZipFile(shaded) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
        out.writestr("META-INF/MANIFEST.MF", MANIFEST.replace(
            "\r\n\r\n", f"\r\nMain-Class: {JOB_MAIN_CLASS}\r\n\r\n"))
        for name in src.namelist():
            if kept_in_job_jar(name):
                out.writestr(zipfile.ZipInfo(name, date_time=src.getinfo(name).date_time), src.read(name),
                             compress_type=zipfile.ZIP_DEFLATED)
                count += 1
    if count == 0:
        raise SystemExit(f"make_lib_jar: {JOB_MAIN_CLASS} is not in {shaded}")
    tmp.replace(output)
    return count


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shaded_jar", type=Path)
    parser.add_argument("flink_lib_dir", type=Path)
    parser.add_argument("output_jar", type=Path)
    parser.add_argument("--job-base", type=Path, default=None,
                        help="also write the base of job jars (JobJarMain, as Main-Class) here")
    args = parser.parse_args(argv)
    stats = make_lib_jar(args.shaded_jar, args.flink_lib_dir, args.output_jar)
    if args.job_base is not None:
        count = make_job_base_jar(args.shaded_jar, args.job_base)
        print(f"{args.job_base}: {count} classes, Main-Class {JOB_MAIN_CLASS}")
    print(f"{args.output_jar}: kept {stats['kept']} entries; dropped {stats['flink']} "
          f"org/apache/flink entries, {stats['in_flink_lib']} already in {args.flink_lib_dir}, "
          f"{stats['job_jar_only']} job-jar-only classes, {stats['providers_dropped']} service providers")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

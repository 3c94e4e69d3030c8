package org.roiseg.client;

import static org.junit.jupiter.api.Assertions.fail;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * The repository's real Python server, run as {@code python -m roiseg.cli serve --port 0} on
 * loopback for integration tests. System properties: {@code roiseg.repo} (repository root) and
 * {@code roiseg.python} (the interpreter, default {@code <repo>/.venv/bin/python}).
 */
final class PythonServer implements AutoCloseable {

    static final long START_SECONDS = 240;

    final Path repo;
    private final Process process;
    private final Path log;
    private final Path ready;
    String host;
    int port;

    private PythonServer(Path repo, Process process, Path log, Path ready) {
        this.repo = repo;
        this.process = process;
        this.log = log;
        this.ready = ready;
    }

    static Path repo() {
        String repo = System.getProperty("roiseg.repo");
        if (repo == null) {
            fail("system property roiseg.repo is not set: run the integration tests with `mvn verify`");
        }
        return Path.of(repo).toAbsolutePath().normalize();
    }

    /** Data shared beside the repository: {@code <repo>/../shared/data}. */
    static Path sharedData() {
        return repo().getParent().resolve("shared").resolve("data");
    }

    /** Starts the server with the shared slides and {@code examples/data} as slide roots. */
    static PythonServer start() throws IOException, InterruptedException {
        return start(null);
    }

    /**
     * Starts the server as {@link #start()} does, and with {@code --dataset-dir datasetDir} (the
     * fast-track calls, docs/fast-track.md) when it is not null.
     */
    static PythonServer start(Path datasetDir) throws IOException, InterruptedException {
        List<String> options = datasetDir == null ? List.of()
                : List.of("--dataset-dir", datasetDir.toAbsolutePath().toString());
        return launch(datasetDir == null ? "roiseg-server-it" : "roiseg-server-fast-track-it", options).awaitReady();
    }

    /**
     * Starts {@code count} servers at once, each with {@code options} and its log in
     * {@code target/<name>-<i>.log}, and waits until all listen.
     */
    static List<PythonServer> startSeveral(int count, String name, List<String> options)
            throws IOException, InterruptedException {
        List<PythonServer> servers = new ArrayList<>();
        try {
            for (int i = 0; i < count; i++) {
                servers.add(launch(name + "-" + i, options));
            }
            for (PythonServer server : servers) {
                server.awaitReady();
            }
            return servers;
        } catch (IOException | InterruptedException | RuntimeException | AssertionError e) {
            servers.forEach(PythonServer::close);
            throw e;
        }
    }

    /** Starts {@code roiseg serve} with the slide roots and {@code options}; the log in target/{@code name}.log. */
    private static PythonServer launch(String name, List<String> options) throws IOException {
        Path repo = repo();
        String python = System.getProperty("roiseg.python", repo.resolve(".venv/bin/python").toString());
        if (!Files.isExecutable(Path.of(python))) {
            fail("The Python interpreter for the roiseg server was not found at " + python
                    + ": run `make install` in " + repo + " first (or pass -Droiseg.python=/path/to/python).");
        }
        Path ready = Files.createTempFile("roiseg-ready", ".txt");
        Files.delete(ready);
        Path log = Path.of("target", name + ".log").toAbsolutePath();
        Files.createDirectories(log.getParent());
        List<String> command = new ArrayList<>(List.of(python, "-m", "roiseg.cli", "serve", "--port", "0",
                "--device", "cpu", "--ready-file", ready.toString()));
        for (Path root : List.of(sharedData().resolve("slides"), repo.resolve("examples/data"))) {
            command.add("--slide-root");
            command.add(root.toString());
        }
        command.addAll(options);
        ProcessBuilder builder = new ProcessBuilder(command).directory(repo.toFile())
                .redirectErrorStream(true).redirectOutput(log.toFile());
        String pythonPath = repo.resolve("python_server").toString();
        String existing = builder.environment().get("PYTHONPATH");
        builder.environment().put("PYTHONPATH", existing == null || existing.isEmpty() ? pythonPath
                : pythonPath + File.pathSeparator + existing);
        return new PythonServer(repo, builder.start(), log, ready);
    }

    private PythonServer awaitReady() throws IOException, InterruptedException {
        long end = System.nanoTime() + TimeUnit.SECONDS.toNanos(START_SECONDS);
        while (System.nanoTime() < end) {
            if (Files.exists(ready) && Files.size(ready) > 0) {
                String address = Files.readString(ready, StandardCharsets.UTF_8).strip();
                Files.deleteIfExists(ready);
                int colon = address.lastIndexOf(':');
                host = address.substring(0, colon);
                port = Integer.parseInt(address.substring(colon + 1).strip());
                return this;
            }
            if (!process.isAlive()) {
                fail("The roiseg server exited with code " + process.exitValue() + " before it listened:\n"
                        + tail(log));
            }
            Thread.sleep(200);
        }
        process.destroyForcibly();
        fail("The roiseg server did not listen within " + START_SECONDS + " s:\n" + tail(log));
        return null;
    }

    RoisegClient.Builder client() {
        return RoisegClient.builder().host(host).port(port);
    }

    String target() {
        return host + ":" + port;
    }

    String logTail() {
        return tail(log);
    }

    private static String tail(Path log) {
        try {
            List<String> lines = Files.readAllLines(log, StandardCharsets.UTF_8);
            return String.join("\n", lines.subList(Math.max(0, lines.size() - 40), lines.size()));
        } catch (IOException e) {
            return "(no log: " + e + ")";
        }
    }

    /** Segment calls this server answered, from the access log in its log. */
    long segmentsAnswered() throws IOException {
        return Files.readAllLines(log, StandardCharsets.UTF_8).stream()
                .filter(line -> line.contains(" Segment ") && line.endsWith(" OK")).count();
    }

    /** Kills the server at once (SIGKILL), as a crash would, and waits until it is gone. */
    void kill() throws InterruptedException {
        process.destroyForcibly();
        process.waitFor(30, TimeUnit.SECONDS);
    }

    /** Asks the server to stop (SIGTERM): it drains, then stops; does not wait. */
    void terminate() {
        process.destroy();
    }

    boolean isAlive() {
        return process.isAlive();
    }

    /** Stops the server: SIGTERM, then a kill after 15 s. */
    @Override
    public void close() {
        process.destroy();
        try {
            if (!process.waitFor(15, TimeUnit.SECONDS)) {
                process.destroyForcibly();
                process.waitFor(5, TimeUnit.SECONDS);
            }
        } catch (InterruptedException e) {
            process.destroyForcibly();
            Thread.currentThread().interrupt();
        }
    }
}

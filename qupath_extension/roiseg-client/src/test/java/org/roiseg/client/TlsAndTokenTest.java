package org.roiseg.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.grpc.Metadata;
import io.grpc.ServerCall;
import io.grpc.ServerCallHandler;
import io.grpc.ServerInterceptor;
import io.grpc.Status;
import io.grpc.TlsServerCredentials;
import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.GeneralSecurityException;
import java.security.Key;
import java.security.KeyStore;
import java.util.Base64;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * TLS and bearer tokens against a loopback server with a self-signed certificate (made with the
 * JDK's keytool) that accepts only one token. The Python server does neither yet.
 */
class TlsAndTokenTest {

    static final String TOKEN = "good-token";

    @TempDir
    static Path dir;
    static File certificate;
    static FakeServer server;

    @BeforeAll
    static void start() throws Exception {
        Path store = dir.resolve("server.p12");
        String keytool = Path.of(System.getProperty("java.home"), "bin", "keytool").toString();
        Process p = new ProcessBuilder(keytool, "-genkeypair", "-alias", "roiseg", "-keyalg", "EC", "-groupname",
                "secp256r1", "-dname", "CN=localhost", "-ext", "SAN=dns:localhost,ip:127.0.0.1", "-validity", "2",
                "-keystore", store.toString(), "-storetype", "PKCS12", "-storepass", "changeit", "-keypass",
                "changeit").redirectErrorStream(true).start();
        String output = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(p.waitFor(60, TimeUnit.SECONDS) && p.exitValue() == 0, "keytool failed: " + output);

        KeyStore keys = KeyStore.getInstance("PKCS12");
        try (InputStream in = new FileInputStream(store.toFile())) {
            keys.load(in, "changeit".toCharArray());
        }
        certificate = dir.resolve("server.crt").toFile();
        File key = dir.resolve("server.key").toFile();
        pem(certificate, "CERTIFICATE", keys.getCertificate("roiseg").getEncoded());
        Key privateKey = keys.getKey("roiseg", "changeit".toCharArray());
        pem(key, "PRIVATE KEY", privateKey.getEncoded());

        ServerInterceptor requireToken = new ServerInterceptor() {
            @Override
            public <Q, R> ServerCall.Listener<Q> interceptCall(ServerCall<Q, R> call, Metadata headers,
                                                               ServerCallHandler<Q, R> next) {
                if (!("Bearer " + TOKEN).equals(headers.get(BearerTokenInterceptor.AUTHORIZATION))) {
                    call.close(Status.UNAUTHENTICATED.withDescription("missing or wrong bearer token"), new Metadata());
                    return new ServerCall.Listener<>() { };
                }
                return next.startCall(call, headers);
            }
        };
        server = new FakeServer(new FakeSegmentation(), TlsServerCredentials.create(certificate, key), requireToken);
    }

    static void pem(File file, String type, byte[] der) throws IOException {
        String body = Base64.getMimeEncoder(64, "\n".getBytes(StandardCharsets.US_ASCII)).encodeToString(der);
        Files.writeString(file.toPath(), "-----BEGIN " + type + "-----\n" + body + "\n-----END " + type + "-----\n");
    }

    @AfterAll
    static void stop() {
        server.close();
    }

    RoisegClient.Builder client() {
        return RoisegClient.builder().host("localhost").port(server.port()).tls(true);
    }

    @Test
    void trustedCertificateAndRightTokenWork() throws GeneralSecurityException {
        try (RoisegClient client = client().trustCertificate(certificate).bearerToken(TOKEN).build()) {
            assertEquals("1.0", client.serverInfo().contractVersion());
            List<ModelDescription> models = client.listModels();
            assertEquals(2, models.size());
            assertEquals(2, client.segmentSlide("/a.svs", 0, RoisTest.box(0, 0, 10, 10), null, null, null)
                    .first().features().size());
        }
    }

    @Test
    void aWrongOrMissingTokenIsRefusedWithAHint() {
        for (String token : new String[] {"bad-token", null}) {
            try (RoisegClient client = client().trustCertificate(certificate).bearerToken(token).build()) {
                RoisegException e = assertThrows(RoisegException.class, client::serverInfo);
                assertEquals(Status.Code.UNAUTHENTICATED, e.getStatusCode());
                assertTrue(e.getUserMessage().contains("refused the access token"), e.getUserMessage());
                assertTrue(e.getUserMessage().contains("Server settings"), e.getUserMessage());
            }
        }
    }

    @Test
    void anUntrustedCertificateSaysSo() {
        try (RoisegClient client = client().bearerToken(TOKEN).build()) {
            RoisegException e = assertThrows(RoisegException.class, client::serverInfo);
            assertEquals(Status.Code.UNAVAILABLE, e.getStatusCode());
            assertTrue(e.getUserMessage().contains("could not be reached securely"), e.getUserMessage());
        }
    }

    @Test
    void plaintextToATlsServerIsNotReachable() {
        try (RoisegClient client = RoisegClient.builder().host("localhost").port(server.port()).build()) {
            RoisegException e = assertThrows(RoisegException.class, client::serverInfo);
            assertEquals(Status.Code.UNAVAILABLE, e.getStatusCode());
        }
    }

    @Test
    void aMissingCertificateFileIsRefused() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> client().trustCertificate(dir.resolve("nope.pem").toFile()).build());
        assertTrue(e.getMessage().contains("does not exist"));
    }

    @Test
    void onlyLoopbackHostsCountAsThisMachineForAPlaintextToken() {
        for (String host : List.of("localhost", "127.0.0.1", "127.1.2.3", "::1")) {
            assertTrue(ServerTarget.isLoopback(host), host);
        }
        for (String host : List.of("10.0.0.5", "gpu-server.lab", "192.168.1.1", "example.org")) {
            assertTrue(!ServerTarget.isLoopback(host), host);
        }
    }
}

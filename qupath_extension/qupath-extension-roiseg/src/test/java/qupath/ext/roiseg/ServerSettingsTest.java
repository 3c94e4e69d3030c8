package qupath.ext.roiseg;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.roiseg.client.RoisegClient;

class ServerSettingsTest {

    static ServerSettings settings(String host, int port, boolean tls, String cert, String token, int minutes) {
        return new ServerSettings(host, port, tls, cert, token, minutes, false, "", "");
    }

    @Test
    void defaultsAreTheLocalServer() {
        ServerSettings d = ServerSettings.defaults();
        assertEquals("127.0.0.1:50051", d.target());
        assertTrue(d.problems().isEmpty());
        assertTrue(d.warnings().isEmpty());
        assertTrue(d.isLoopback());
    }

    @Test
    void stringsAreStrippedAndNullsEmpty() {
        ServerSettings s = new ServerSettings("  gpu-box ", 9000, false, null, null, 5, false, null, null);
        assertEquals("gpu-box:9000", s.target());
        assertEquals("", s.bearerToken());
        assertFalse(s.hasToken());
        assertEquals("[::1]:50051", settings("::1", 50051, false, "", "", 10).target());
    }

    @Test
    void mapsToAClientBuilder() {
        try (RoisegClient client = settings("gpu-box", 9000, false, "", "secret-token", 3).clientBuilder().build()) {
            assertEquals("gpu-box:9000", client.target());
        }
        try (RoisegClient client = settings("gpu-box", 443, true, "", "", 3).clientBuilder().build()) {
            assertEquals("gpu-box:443", client.target());
        }
    }

    @Test
    void trustCertificateNeedsTlsAndAFile(@TempDir Path dir) throws Exception {
        Path missing = dir.resolve("missing.pem");
        assertTrue(settings("h", 1, false, missing.toString(), "", 1).problems().get(0).contains("TLS is off"));
        assertTrue(settings("h", 1, true, missing.toString(), "", 1).problems().get(0).contains("does not exist"));
        Path pem = Files.writeString(dir.resolve("server.pem"), "not a certificate");
        ServerSettings s = settings("h", 1, true, pem.toString(), "", 1);
        assertTrue(s.problems().isEmpty());
        // the client builder reads the file: a broken one is refused before any connection
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> s.clientBuilder().build());
        assertTrue(e.getMessage().contains("certificate"), e.getMessage());
    }

    @Test
    void theHostMayNameSeveralServers() {
        ServerSettings list = settings("gpu1, gpu2:9001", 9000, false, "", "", 10);
        assertTrue(list.problems().isEmpty(), list.problems().toString());
        assertEquals("gpu1:9000,gpu2:9001", list.target());
        assertTrue(list.serverTarget().several());
        try (RoisegClient client = list.clientBuilder().build()) {
            assertEquals("gpu1:9000,gpu2:9001", client.target());
        }
        ServerSettings dns = settings("dns:///roiseg.lab.svc.cluster.local", 50051, false, "", "", 10);
        assertEquals("dns:///roiseg.lab.svc.cluster.local:50051", dns.target());
        assertTrue(settings("127.0.0.1:1,localhost:2", 50051, false, "", "t", 10).isLoopback());
        assertFalse(settings("127.0.0.1:1,gpu:2", 50051, false, "", "t", 10).isLoopback());
        assertTrue(settings("gpu1,,gpu2", 50051, false, "", "", 10).problems().get(0).contains("host:port"));
    }

    @Test
    void problemsAreReportedForTheUser() {
        assertTrue(settings("", 50051, false, "", "", 10).problems().get(0).contains("host"));
        assertTrue(settings("http://x", 50051, false, "", "", 10).problems().get(0).contains("not a host"));
        assertTrue(settings("x", 0, false, "", "", 10).problems().get(0).contains("port"));
        assertTrue(settings("x", 70000, false, "", "", 10).problems().get(0).contains("port"));
        assertTrue(settings("x", 1, false, "", "a token", 10).problems().get(0).contains("token"));
        assertTrue(settings("x", 1, false, "", "", 0).problems().get(0).contains("time limit"));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> settings("", 1, false, "", "", 1).clientBuilder());
        assertTrue(e.getMessage().endsWith("(Extensions > roiseg > Server settings)"), e.getMessage());
        ServerSettings prefixOnly = new ServerSettings("x", 1, false, "", "", 1, true, "", "/data");
        assertEquals(1, prefixOnly.problems().size());
    }

    @Test
    void tokenWithoutTlsIsWarnedAboutOffThisComputer() {
        assertTrue(settings("gpu-box", 50051, false, "", "t", 10).warnings().get(0).contains("unencrypted"));
        assertTrue(settings("localhost", 50051, false, "", "t", 10).warnings().isEmpty());
        assertTrue(settings("gpu-box", 50051, true, "", "t", 10).warnings().isEmpty());
    }

    @Test
    void toStringHidesTheToken() {
        String text = settings("gpu-box", 50051, true, "", "very-secret", 10).toString();
        assertFalse(text.contains("very-secret"));
        assertTrue(text.contains("token set"));
    }

    @Test
    void ports() {
        assertEquals(50051, ServerSettings.parsePort(" 50051 "));
        assertThrows(IllegalArgumentException.class, () -> ServerSettings.parsePort("http"));
        assertThrows(IllegalArgumentException.class, () -> ServerSettings.parsePort("0"));
        assertThrows(IllegalArgumentException.class, () -> ServerSettings.parsePort(null));
    }
}

package org.roiseg.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.net.URI;
import java.util.List;
import org.junit.jupiter.api.Test;

class ServerTargetTest {

    @Test
    void oneServer() {
        ServerTarget t = ServerTarget.parse(" gpu-box:9000 ");
        assertEquals(List.of(new ServerTarget.HostPort("gpu-box", 9000)), t.addresses());
        assertFalse(t.several());
        assertEquals("dns:///gpu-box:9000", t.channelTarget());
        assertEquals("gpu-box:9000", t.toString());
        assertEquals("gpu-box:50051", ServerTarget.parse("gpu-box").toString());
        assertEquals("[::1]:7000", ServerTarget.parse("[::1]:7000").toString());
        assertEquals("[::1]:50051", ServerTarget.parse("::1").toString());
        assertTrue(ServerTarget.parse("[::1]:7000").loopback());
    }

    @Test
    void severalServersGoThroughTheListResolver() {
        ServerTarget t = ServerTarget.parse("127.0.0.1:1, [::1]:2,gpu:3");
        assertTrue(t.several());
        assertEquals(3, t.addresses().size());
        URI uri = URI.create(t.channelTarget());
        assertEquals(AddressListNameResolverProvider.SCHEME, uri.getScheme());
        assertEquals("/127.0.0.1:1,[::1]:2,gpu:3", uri.getPath());
        assertEquals(1, ServerTarget.parse("a:1,a:1").addresses().size());
        assertFalse(ServerTarget.parse("127.0.0.1:1,gpu:3").loopback());
        assertEquals("gpu1:9000,gpu2:9001", ServerTarget.parse("gpu1, gpu2:9001", 9000).toString());
        assertEquals("dns:///roiseg:9000", ServerTarget.parse("dns:///roiseg", 9000).toString());
    }

    @Test
    void aDnsNameStandsForSeveral() {
        ServerTarget t = ServerTarget.parse("dns:///roiseg.lab.svc.cluster.local:50051");
        assertTrue(t.several() && t.dns());
        assertEquals("dns:///roiseg.lab.svc.cluster.local:50051", t.channelTarget());
    }

    @Test
    void malformedTargetsSayWhatToWrite() {
        for (String bad : List.of("", " ", "a:1,", ",a:1", "a:0", "a:70000", "a:port", "http://a:1", "dns://x/a:1",
                "dns:///a:1,b:2", "a b:1", "[::1", "[::1]x", "gpu::1")) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> ServerTarget.parse(bad),
                    bad);
            assertFalse(e.getMessage().isBlank(), bad);
        }
        assertTrue(assertThrows(IllegalArgumentException.class, () -> ServerTarget.parse("http://a:1"))
                .getMessage().contains("host1:port1,host2:port2"));
    }

    @Test
    void theBuilderTakesATarget() {
        try (RoisegClient client = RoisegClient.builder().target("127.0.0.1:5001,127.0.0.1:5002").build()) {
            assertEquals("127.0.0.1:5001,127.0.0.1:5002", client.target());
        }
        try (RoisegClient client = RoisegClient.builder().host("gpu").port(9000).build()) {
            assertEquals("gpu:9000", client.target());
        }
    }
}

package org.roiseg.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.health.v1.HealthCheckRequest;
import io.grpc.health.v1.HealthCheckResponse;
import io.grpc.health.v1.HealthGrpc;
import java.awt.image.BufferedImage;
import java.io.IOException;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.Test;
import org.locationtech.jts.geom.Geometry;

/**
 * Several servers behind one client target: two real Python servers on loopback, a client given
 * both as {@code host:port,host:port}. Calls are spread over both, an upload stays with its server,
 * a killed server's calls go to the other, and a draining server (NOT_SERVING) gets no new calls.
 */
class BalancingIT {

    static final Geometry ROI = RoisTest.box(10, 10, 150, 150);

    /** 160 x 160 px of real tissue, larger than 32 KiB as PNG. */
    static RegionImage tissue() throws IOException {
        BufferedImage glas = SegmentationIT.glas("images", "train_1.png");
        BufferedImage crop = new BufferedImage(160, 160, BufferedImage.TYPE_INT_RGB);
        crop.createGraphics().drawImage(glas.getSubimage(200, 150, 160, 160), 0, 0, null);
        return new RegionImage(crop, 0, 0, 1, SegmentationIT.GLAS_MPP);
    }

    static RoisegClient.Builder client(List<PythonServer> servers) {
        return RoisegClient.builder().target(servers.get(0).target() + "," + servers.get(1).target());
    }

    static long[] answered(List<PythonServer> servers) throws IOException {
        return new long[] {servers.get(0).segmentsAnswered(), servers.get(1).segmentsAnswered()};
    }

    static void segment(RoisegClient client, RegionImage image, AtomicInteger uploads) {
        SegmentResult result = client.segmentRegion(image, ROI, SegmentOptions.defaults(),
                (stage, modelId, done, total, message) -> {
                    if (stage == Stage.UPLOADING && done == total) {
                        uploads.incrementAndGet();
                    }
                }, null);
        assertEquals(1, result.models().size());
    }

    @Test
    void callsAreSpreadUploadsStayWithTheirServerAndAKilledServerFailsOver() throws Exception {
        RegionImage image = tissue();
        assertTrue(Png.encode(image.image()).length > 32 << 10, "the test image must be uploaded");
        List<PythonServer> servers = PythonServer.startSeveral(2, "roiseg-server-balancing-it",
                List.of("--threads", "1", "--drain-seconds", "0"));
        AtomicInteger uploads = new AtomicInteger();
        try (RoisegClient client = client(servers).build();
             RoisegClient uploading = client(servers).maxMessageBytes(64 << 10).build()) {
            for (int i = 0; i < 4; i++) {
                segment(client, image, uploads);
            }
            long[] spread = answered(servers);
            assertTrue(spread[0] >= 1 && spread[1] >= 1,
                    "4 calls should reach both servers: " + spread[0] + ", " + spread[1]);
            assertEquals(0, uploads.get());

            // Each upload and its Segment call go to the same server.
            for (int i = 0; i < 3; i++) {
                segment(uploading, image, uploads);
            }
            assertEquals(3, uploads.get());
            long[] after = answered(servers);
            long[] served = {after[0] - spread[0], after[1] - spread[1]};
            assertEquals(3, Math.max(served[0], served[1]), "uploads went to both servers: "
                    + served[0] + ", " + served[1]);
            PythonServer holder = servers.get(served[0] > 0 ? 0 : 1);
            PythonServer other = servers.get(served[0] > 0 ? 1 : 0);

            // The uploads' server dies: every call goes to the other, without an error.
            holder.kill();
            long before = other.segmentsAnswered();
            segment(uploading, image, uploads);
            assertEquals(4, uploads.get());
            assertEquals(1, client.serverInfo().contractMajor());
            assertFalse(client.listModels().isEmpty());
            for (int i = 0; i < 3; i++) {
                segment(client, image, uploads);
            }
            assertEquals(4, other.segmentsAnswered() - before);
        } finally {
            servers.forEach(PythonServer::close);
        }
    }

    @Test
    void aDrainingServerGetsNoNewCalls() throws Exception {
        RegionImage image = tissue();
        List<PythonServer> servers = PythonServer.startSeveral(2, "roiseg-server-draining-it",
                List.of("--threads", "1", "--drain-seconds", "60"));
        PythonServer draining = servers.get(0);
        AtomicInteger uploads = new AtomicInteger();
        try (RoisegClient client = client(servers).build()) {
            for (int i = 0; i < 2; i++) {
                segment(client, image, uploads);
            }
            draining.terminate();
            long end = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
            while (health(draining) != HealthCheckResponse.ServingStatus.NOT_SERVING) {
                assertTrue(System.nanoTime() < end, "SIGTERM should make the server report NOT_SERVING");
                Thread.sleep(100);
            }
            Thread.sleep(500); // the client's health watch hears it as the check did
            long[] before = answered(servers);
            for (int i = 0; i < 4; i++) {
                segment(client, image, uploads);
            }
            long[] after = answered(servers);
            assertTrue(draining.isAlive(), "a draining server still answers calls");
            assertEquals(List.of(0L, 4L), List.of(after[0] - before[0], after[1] - before[1]));
        } finally {
            servers.forEach(PythonServer::close);
        }
    }

    /** The roiseg service's health status, asked of one server alone. */
    static HealthCheckResponse.ServingStatus health(PythonServer server) throws InterruptedException {
        ManagedChannel channel = ManagedChannelBuilder.forAddress(server.host, server.port).usePlaintext().build();
        try {
            return HealthGrpc.newBlockingStub(channel).withDeadlineAfter(10, TimeUnit.SECONDS)
                    .check(HealthCheckRequest.newBuilder().setService("roiseg.v1.Segmentation").build())
                    .getStatus();
        } finally {
            channel.shutdownNow();
            channel.awaitTermination(5, TimeUnit.SECONDS);
        }
    }
}

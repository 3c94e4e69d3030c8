package org.roiseg.client;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTimeoutPreemptively;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.grpc.Status;
import io.grpc.stub.ServerCallStreamObserver;
import java.awt.image.BufferedImage;
import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.net.ServerSocket;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import javax.imageio.ImageIO;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.locationtech.jts.geom.Geometry;
import org.roiseg.proto.v1.RegionPixels;
import org.roiseg.proto.v1.SegmentRequest;

/** The client against a scripted server on loopback: requests, streams, cancellation, errors. */
class RoisegClientTest {

    static final Geometry ROI = RoisTest.box(1000, 2000, 1100, 2080);
    static final Duration WAIT = Duration.ofSeconds(20);

    FakeSegmentation service;
    FakeServer server;

    @BeforeEach
    void start() {
        service = new FakeSegmentation();
        server = new FakeServer(service);
    }

    @AfterEach
    void stop() {
        server.close();
    }

    static BufferedImage noise(int width, int height, long seed) {
        BufferedImage image = new BufferedImage(width, height, BufferedImage.TYPE_INT_RGB);
        Random random = new Random(seed);
        for (int y = 0; y < height; y++) {
            for (int x = 0; x < width; x++) {
                image.setRGB(x, y, random.nextInt(0x1000000));
            }
        }
        return image;
    }

    static BufferedImage decode(byte[] png) throws IOException {
        return ImageIO.read(new ByteArrayInputStream(png));
    }

    static void assertSamePixels(BufferedImage expected, BufferedImage actual) {
        assertEquals(expected.getWidth(), actual.getWidth());
        assertEquals(expected.getHeight(), actual.getHeight());
        for (int y = 0; y < expected.getHeight(); y++) {
            for (int x = 0; x < expected.getWidth(); x++) {
                assertEquals(expected.getRGB(x, y) & 0xFFFFFF, actual.getRGB(x, y) & 0xFFFFFF, x + "," + y);
            }
        }
    }

    @Test
    void serverInfoAndModelsAreMapped() {
        try (RoisegClient client = server.client().build()) {
            ServerInfo info = client.serverInfo();
            assertEquals("1.0", info.contractVersion());
            assertEquals("m1", info.defaultModelId());
            assertTrue(info.slidePathsAllowed());
            List<ModelDescription> models = client.listModels();
            assertEquals(2, models.size());
            ModelDescription m1 = models.get(0);
            assertTrue(m1.isDefault());
            assertFalse(models.get(1).isDefault());
            assertEquals(List.of(new ClassDescription(0, "Stroma", 0x96C896, true),
                    new ClassDescription(1, "Gland epithelium", 0xC82828)), m1.classes());
            assertEquals(1.0, m1.mpp());
            assertEquals(256, m1.tileSize());
            assertEquals(32, m1.overlap());
            assertEquals("0.8", m1.metrics().get("dice"));
            assertEquals("ab".repeat(32), m1.sha256());
            assertEquals(0xC82828, m1.classNamed("Gland epithelium").rgb());
        }
    }

    @Test
    void aNewerServerContractAsksToUpdateTheExtension() {
        service.info = service.info.toBuilder().setContractMajor(2).setServerVersion("0.9.0").build();
        try (RoisegClient client = server.client().build()) {
            RoisegException e = assertThrows(RoisegException.class, client::listModels);
            assertEquals(Status.Code.FAILED_PRECONDITION, e.getStatusCode());
            assertTrue(e.getUserMessage().contains("speaks contract version 2.0"), e.getUserMessage());
            assertTrue(e.getUserMessage().endsWith("update the roiseg QuPath extension."), e.getUserMessage());
            assertThrows(RoisegException.class, () -> client.segmentRegion(
                    new RegionImage(noise(8, 8, 1), 1000, 2000, 1, 0.5), ROI, null));
            assertTrue(service.segmentRequests.isEmpty());
        }
    }

    @Test
    void anOlderServerContractAsksToUpdateTheServer() {
        service.info = service.info.toBuilder().setContractMajor(0).build();
        try (RoisegClient client = server.client().build()) {
            RoisegException e = assertThrows(RoisegException.class, client::serverInfo);
            assertTrue(e.getUserMessage().endsWith("update the roiseg server."), e.getUserMessage());
        }
    }

    @Test
    void bearerTokenIsSentWithEveryCall() {
        try (RoisegClient client = server.client().bearerToken("s3cret-token").build()) {
            client.serverInfo();
            client.listModels();
            client.segmentRegion(new RegionImage(noise(16, 16, 2), 1000, 2000, 1, 0.5), ROI, null);
        }
        assertEquals(3, server.headers.size());
        server.headers.forEach(h -> assertEquals("Bearer s3cret-token", h.get(BearerTokenInterceptor.AUTHORIZATION)));
        server.headers.clear();
        try (RoisegClient client = server.client().build()) {
            client.serverInfo();
        }
        assertNull(server.headers.get(0).get(BearerTokenInterceptor.AUTHORIZATION));
    }

    @Test
    void aSmallImageIsSentInlineWithTheRegionAndOptions() throws IOException {
        BufferedImage image = noise(64, 48, 3);
        SegmentOptions options = SegmentOptions.builder().modelIds("m1", "m2").classes("Stroma")
                .minAreaMicrons2(50.0).simplifyMicrons(0.0).hysteresis(true, null, 0.9).includeBackground(true)
                .confidenceMap(true).reviewBelow(0.7).classNames(Map.of("Stroma", "Other tissue")).build();
        try (RoisegClient client = server.client().build()) {
            client.segmentRegion(new RegionImage(image, 1000.5, 2000, 2, 0.25).withFullImageSize(40000, 30000), ROI,
                    options);
        }
        SegmentRequest request = service.segmentRequests.get(0);
        assertEquals(List.of("m1", "m2"), request.getModelIdsList());
        assertEquals(1, request.getClientContractMajor());
        assertEquals(Conventions.CONTRACT_MINOR, request.getClientContractMinor());
        RegionPixels pixels = request.getImage().getPixels();
        assertEquals(RegionPixels.DataCase.ENCODED, pixels.getDataCase());
        assertSamePixels(image, decode(pixels.getEncoded().toByteArray()));
        assertEquals(2, pixels.getDownsample());
        assertEquals(1000.5, pixels.getOriginX());
        assertEquals(2000, pixels.getOriginY());
        assertEquals(0.25, pixels.getPixelSizeUm());
        assertEquals(40000, pixels.getImageWidth());
        assertEquals(30000, pixels.getImageHeight());
        assertEquals(Rois.toProto(ROI), request.getRoi());
        var o = request.getOptions();
        assertEquals(List.of("Stroma"), o.getClassesList());
        assertTrue(o.hasMinAreaUm2());
        assertEquals(50.0, o.getMinAreaUm2());
        assertFalse(o.hasMinHoleUm2());
        assertTrue(o.hasSimplifyUm());
        assertTrue(o.getHysteresis().getEnabled());
        assertFalse(o.getHysteresis().hasLow());
        assertEquals(0.9, o.getHysteresis().getHigh());
        assertTrue(o.getIncludeBackground());
        assertFalse(o.getAllowUpsample());
        assertTrue(o.getConfidenceMap());
        assertEquals(0.7, o.getReviewBelow());
        assertEquals(Map.of("Stroma", "Other tissue"), o.getClassNamesMap());
        assertFalse(o.getAllClasses(), "catch-all classes are left out unless asked for");
        assertTrue(options.toBuilder().allClasses(true).build().toProto().getAllClasses());
        assertTrue(service.uploadChunkSizes.isEmpty());
    }

    @Test
    void aLargeImageIsUploadedInChunksFirst() throws IOException {
        BufferedImage image = noise(1000, 1000, 4);  // ~3 MB of PNG: incompressible noise
        List<int[]> uploads = new CopyOnWriteArrayList<>();
        try (RoisegClient client = server.client().maxMessageBytes(1 << 20).build()) {
            client.segmentRegion(new RegionImage(image, 0, 0, 1, 0.5), RoisTest.box(0, 0, 500, 500), null,
                    (stage, model, done, total, message) -> {
                        if (stage == Stage.UPLOADING) {
                            uploads.add(new int[] {done, total});
                        }
                    }, new CancellationHandle());
        }
        RegionPixels pixels = service.segmentRequests.get(0).getImage().getPixels();
        assertEquals("upload-1", pixels.getUploadId());
        assertEquals(service.uploaded.length, service.uploadAnnounced);
        List<Integer> sizes = service.uploadChunkSizes;
        assertTrue(sizes.size() >= 3, sizes.toString());
        for (int i = 0; i < sizes.size() - 1; i++) {
            assertEquals(RoisegClient.UPLOAD_CHUNK_BYTES, sizes.get(i));
        }
        assertTrue(sizes.get(sizes.size() - 1) <= RoisegClient.UPLOAD_CHUNK_BYTES);
        assertSamePixels(image, decode(service.uploaded));
        int[] last = uploads.get(uploads.size() - 1);
        assertEquals(sizes.size(), last[0]);
        assertEquals(sizes.size(), last[1]);
    }

    @Test
    void theServersSmallerMessageLimitAlsoTriggersTheUpload() {
        service.info = service.info.toBuilder().setMaxMessageBytes(200_000).build();
        try (RoisegClient client = server.client().build()) {
            client.segmentRegion(new RegionImage(noise(200, 200, 5), 0, 0, 1, 0.5), RoisTest.box(0, 0, 50, 50), null);
        }
        assertEquals("upload-1", service.segmentRequests.get(0).getImage().getPixels().getUploadId());
    }

    @Test
    void geoJsonChunksAreJoinedAcrossCharacterBoundariesAndProgressIsReported() {
        List<String> events = new CopyOnWriteArrayList<>();
        SegmentResult result;
        try (RoisegClient client = server.client().build()) {
            result = client.segmentSlide("/slides/a.svs", Double.NaN, ROI, null,
                    (stage, model, done, total, message) -> events.add(stage + " " + model + " " + done + "/" + total),
                    null);
        }
        assertEquals(List.of("READING m1 0/0", "INFERENCE m1 1/2", "INFERENCE m1 2/2"), events);
        SegmentRequest request = service.segmentRequests.get(0);
        assertEquals("/slides/a.svs", request.getImage().getSlide().getPath());
        assertEquals(0.0, request.getImage().getSlide().getPixelSizeUm());

        ModelSegmentation m1 = result.model("m1").orElseThrow();
        assertEquals(m1, result.first());
        assertEquals(2, m1.features().size());
        assertEquals(96.0, m1.features().get(0).measurements().get(Conventions.AREA_MEASUREMENT));
        assertEquals("0.1.0", m1.modelVersion());
        assertEquals(List.of(new ClassArea("Gland epithelium", 96, 1)), m1.classAreas());
        ExecutionSummary e = m1.execution();
        assertEquals(-1, e.level());
        assertEquals(new ExecutionSummary.Region(10, 20, 30, 40), e.region());
        assertEquals(2, e.tiles());
        assertEquals(1.5, e.timings().inference());
        assertEquals(2.5, e.timings().total());
    }

    @Test
    void aWrongFeatureCountOrAMissingResultIsReported() {
        service.segment = (r, out) -> {
            FakeSegmentation.sendResult(out, "m1", GeoJsonFeaturesTest.COLLECTION, 3, 1 << 20);
            out.onCompleted();
        };
        try (RoisegClient client = server.client().build()) {
            RoisegException e = assertThrows(RoisegException.class,
                    () -> client.segmentSlide("/a.svs", 0, ROI, null, null, null));
            assertEquals(Status.Code.DATA_LOSS, e.getStatusCode());
            assertTrue(e.getUserMessage().contains("announced 3 polygons"), e.getUserMessage());

            service.segment = (r, out) -> {
                out.onNext(FakeSegmentation.progress(org.roiseg.proto.v1.Stage.STAGE_READING, "m1", 0, 0));
                out.onCompleted();
            };
            e = assertThrows(RoisegException.class, () -> client.segmentSlide("/a.svs", 0, ROI, null, null, null));
            assertEquals(Status.Code.DATA_LOSS, e.getStatusCode());
        }
    }

    @Test
    void serverRefusalsKeepTheServersMessage() {
        service.segment = (r, out) -> FakeSegmentation.fail(out, Status.NOT_FOUND.withDescription(
                "unknown model 'nope'; available: m1, m2"));
        try (RoisegClient client = server.client().build()) {
            RoisegException e = assertThrows(RoisegException.class, () -> client.segmentSlide("/a.svs", 0, ROI,
                    SegmentOptions.builder().modelIds("nope").build(), null, null));
            assertEquals(Status.Code.NOT_FOUND, e.getStatusCode());
            assertEquals("Unknown model 'nope'; available: m1, m2.", e.getUserMessage());
        }
    }

    /** A Segment that reports inference, then waits until the client goes away. */
    CountDownLatch hangUntilCancelled() {
        CountDownLatch serverSawCancel = new CountDownLatch(1);
        service.segment = (r, out) -> {
            ((ServerCallStreamObserver<?>) out).setOnCancelHandler(serverSawCancel::countDown);
            out.onNext(FakeSegmentation.progress(org.roiseg.proto.v1.Stage.STAGE_INFERENCE, "m1", 0, 100));
        };
        return serverSawCancel;
    }

    @Test
    void cancellingDuringInferenceStopsTheCallOnBothSides() throws InterruptedException {
        CountDownLatch serverSawCancel = hangUntilCancelled();
        CancellationHandle handle = new CancellationHandle();
        try (RoisegClient client = server.client().build()) {
            RoisegCancelledException e = assertTimeoutPreemptively(WAIT, () -> assertThrows(
                    RoisegCancelledException.class, () -> client.segmentRegion(
                            new RegionImage(noise(32, 32, 6), 1000, 2000, 1, 0.5), ROI, null,
                            (stage, model, done, total, message) -> {
                                if (stage == Stage.INFERENCE) {
                                    new Thread(handle::cancel).start();
                                }
                            }, handle)));
            assertEquals(Status.Code.CANCELLED, e.getStatusCode());
            assertTrue(serverSawCancel.await(10, TimeUnit.SECONDS), "the server was not told");
            assertEquals(2, client.listModels().size());  // the connection still works
        }
    }

    @Test
    void aHandleCancelledBeforehandSendsNothing() {
        CancellationHandle handle = new CancellationHandle();
        handle.cancel();
        try (RoisegClient client = server.client().build()) {
            assertThrows(RoisegCancelledException.class, () -> client.segmentSlide("/a.svs", 0, ROI, null, null,
                    handle));
        }
        assertTrue(service.segmentRequests.isEmpty());
        assertTrue(handle.isCancelled());
    }

    @Test
    void interruptingTheCallingThreadCancels() throws InterruptedException {
        CountDownLatch serverSawCancel = hangUntilCancelled();
        Thread caller = Thread.currentThread();
        try (RoisegClient client = server.client().build()) {
            assertThrows(RoisegCancelledException.class, () -> client.segmentSlide("/a.svs", 0, ROI, null,
                    (stage, model, done, total, message) -> new Thread(caller::interrupt).start(), null));
            assertTrue(Thread.interrupted(), "the interrupt flag is kept");
            assertTrue(serverSawCancel.await(10, TimeUnit.SECONDS));
        }
    }

    @Test
    void aListenerExceptionCancelsTheCallAndReachesTheCaller() throws InterruptedException {
        CountDownLatch serverSawCancel = hangUntilCancelled();
        try (RoisegClient client = server.client().build()) {
            IllegalStateException e = assertThrows(IllegalStateException.class, () -> client.segmentSlide("/a.svs",
                    0, ROI, null, (stage, model, done, total, message) -> {
                        throw new IllegalStateException("stop");
                    }, null));
            assertEquals("stop", e.getMessage());
            assertTrue(serverSawCancel.await(10, TimeUnit.SECONDS));
        }
    }

    @Test
    void theDeadlineEndsASlowCallWithItsOwnMessage() {
        hangUntilCancelled();
        try (RoisegClient client = server.client().deadline(Duration.ofSeconds(1)).build()) {
            RoisegException e = assertTimeoutPreemptively(WAIT, () -> assertThrows(RoisegException.class,
                    () -> client.segmentSlide("/a.svs", 0, ROI, null, null, null)));
            assertEquals(Status.Code.DEADLINE_EXCEEDED, e.getStatusCode());
            assertTrue(e.getUserMessage().startsWith("The server took longer than 1 s"), e.getUserMessage());
        }
    }

    @Test
    void aClosedPortIsNotReachable() throws IOException {
        int port;
        try (ServerSocket socket = new ServerSocket(0)) {
            port = socket.getLocalPort();
        }
        try (RoisegClient client = RoisegClient.builder().host("127.0.0.1").port(port).build()) {
            RoisegException e = assertThrows(RoisegException.class, client::listModels);
            assertEquals(Status.Code.UNAVAILABLE, e.getStatusCode());
            assertEquals("The roiseg server at 127.0.0.1:" + port + " is not reachable. Is it running? "
                    + "Check Extensions > roiseg > Server settings.", e.getUserMessage());
        }
    }

    @Test
    void badSettingsAndArgumentsAreRefusedBeforeAnyCall() {
        assertThrows(IllegalArgumentException.class, () -> RoisegClient.builder().port(0));
        assertThrows(IllegalArgumentException.class, () -> RoisegClient.builder().host(" "));
        assertThrows(IllegalArgumentException.class, () -> RoisegClient.builder().deadline(Duration.ZERO));
        assertThrows(IllegalArgumentException.class, () -> RoisegClient.builder().bearerToken("a b"));
        assertThrows(IllegalArgumentException.class, () -> RoisegClient.builder()
                .trustCertificate(new java.io.File("cert.pem")).build());
        assertThrows(IllegalArgumentException.class, () -> SegmentOptions.builder().minAreaMicrons2(-1.0));
        assertThrows(IllegalArgumentException.class, () -> SegmentOptions.builder().hysteresis(true, 0.9, 0.5));
        assertThrows(IllegalArgumentException.class, () -> new RegionImage(noise(2, 2, 0), 0, 0, 0, 0.5));
        try (RoisegClient client = server.client().build()) {
            Geometry line = RoisTest.F.createLineString(new org.locationtech.jts.geom.Coordinate[] {
                new org.locationtech.jts.geom.Coordinate(0, 0), new org.locationtech.jts.geom.Coordinate(1, 1)});
            assertThrows(IllegalArgumentException.class, () -> client.segmentRegion(
                    new RegionImage(noise(2, 2, 0), 0, 0, 1, 0.5), line, null));
            assertThrows(IllegalArgumentException.class, () -> client.segmentSlide(" ", 0, ROI, null, null, null));
        }
        assertTrue(server.headers.isEmpty());
    }

    @Test
    void nonRgbImagesAreSentAsRgb() throws IOException {
        BufferedImage gray = new BufferedImage(20, 10, BufferedImage.TYPE_USHORT_GRAY);
        gray.getRaster().setSample(3, 4, 0, 65535);
        try (RoisegClient client = server.client().build()) {
            client.segmentRegion(new RegionImage(gray, 0, 0, 1, 0.5), RoisTest.box(0, 0, 20, 10), null);
        }
        BufferedImage sent = decode(service.segmentRequests.get(0).getImage().getPixels().getEncoded().toByteArray());
        assertEquals(20, sent.getWidth());
        assertArrayEquals(new int[] {255, 255, 255}, sent.getRaster().getPixel(3, 4, new int[3]));
    }
}

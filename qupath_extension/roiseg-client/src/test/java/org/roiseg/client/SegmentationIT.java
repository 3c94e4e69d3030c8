package org.roiseg.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTimeoutPreemptively;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.grpc.Status;
import java.awt.Graphics2D;
import java.awt.image.BufferedImage;
import java.io.IOException;
import java.net.ServerSocket;
import java.nio.file.Path;
import java.time.Duration;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.Set;
import java.util.TreeSet;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.atomic.AtomicLong;
import java.util.stream.Collectors;
import javax.imageio.ImageIO;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;
import org.locationtech.jts.geom.Coordinate;
import org.locationtech.jts.geom.Geometry;
import org.locationtech.jts.geom.LinearRing;
import org.locationtech.jts.geom.Polygon;
import org.locationtech.jts.geom.prep.PreparedGeometry;
import org.locationtech.jts.geom.prep.PreparedGeometryFactory;
import org.locationtech.jts.operation.union.UnaryUnionOp;

/**
 * The client against the repository's real Python server, its default model and real tissue:
 * GlaS H&amp;E images (0.62 µm/px) sent as pixels, and the CMU slide read by the server.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class SegmentationIT {

    static final double GLAS_MPP = 0.62;
    static final String GLAND = "Gland epithelium";

    PythonServer server;
    RoisegClient client;
    ModelDescription model;
    BufferedImage large;

    @BeforeAll
    void start() throws Exception {
        server = PythonServer.start();
        client = server.client().build();
        List<ModelDescription> models = client.listModels();
        model = models.stream().filter(ModelDescription::isDefault).findFirst().orElseThrow();
    }

    @AfterAll
    void stop() {
        if (client != null) {
            client.close();
        }
        if (server != null) {
            server.close();
        }
    }

    static BufferedImage glas(String folder, String name) throws IOException {
        Path file = PythonServer.sharedData().resolve("glas-train").resolve(folder).resolve(name);
        BufferedImage image = ImageIO.read(file.toFile());
        assertNotNull(image, "cannot read " + file);
        return image;
    }

    /** About 3000 x 3000 px of real tissue: GlaS images side by side. */
    BufferedImage largeImage() throws IOException {
        if (large == null) {
            BufferedImage image = new BufferedImage(3000, 3000, BufferedImage.TYPE_INT_RGB);
            Graphics2D g = image.createGraphics();
            int n = 1;
            for (int y = 0; y < 3000; y += 522) {
                for (int x = 0; x < 3000; x += 775) {
                    g.drawImage(glas("images", "train_" + (n++) + ".png"), x, y, null);
                }
            }
            g.dispose();
            large = image;
        }
        return large;
    }

    static Polygon polygon(double[] shell, double[]... holes) {
        LinearRing[] rings = new LinearRing[holes.length];
        for (int i = 0; i < holes.length; i++) {
            rings[i] = RoisTest.ring(holes[i]);
        }
        return RoisTest.F.createPolygon(RoisTest.ring(shell), rings);
    }

    static Geometry union(List<SegmentedFeature> features, String className) {
        List<Geometry> parts = features.stream()
                .filter(f -> className == null || className.equals(f.className()))
                .map(SegmentedFeature::geometry).collect(Collectors.toList());
        return parts.isEmpty() ? RoisTest.F.createPolygon() : UnaryUnionOp.union(parts);
    }

    /** Checks what every result must satisfy: inside the ROI, covering it, the model's classes. */
    void assertWellFormed(ModelSegmentation result, Geometry roi, boolean withBackground) {
        assertEquals(model.id(), result.modelId());
        assertEquals(model.version(), result.modelVersion());
        assertEquals(model.sha256(), result.checkpointSha256());
        assertFalse(result.features().isEmpty(), "no polygons returned");
        Map<String, Integer> colours = new HashMap<>();
        model.classes().forEach(c -> colours.put(c.name(), c.rgb()));
        if (withBackground) {
            colours.put(Conventions.BACKGROUND_CLASS, Conventions.BACKGROUND_RGB);
        }
        Geometry tolerance = roi.buffer(0.05);
        for (SegmentedFeature f : result.features()) {
            assertTrue(colours.containsKey(f.className()), "unknown class " + f.className());
            assertEquals(colours.get(f.className()), f.rgb(), "colour of " + f.className());
            assertTrue(tolerance.covers(f.geometry()), "a " + f.className() + " polygon leaves the ROI by "
                    + f.geometry().difference(roi).getArea() + " px²");
            assertTrue(f.isRoisegObject());
            assertEquals(model.id(), f.metadata().get(Conventions.MODEL_ID_KEY));
            assertEquals(model.version(), f.metadata().get(Conventions.MODEL_VERSION_KEY));
            assertTrue(f.measurements().get(Conventions.AREA_MEASUREMENT) > 0);
        }
        if (withBackground) {
            Geometry all = union(result.features(), null);
            assertEquals(roi.getArea(), all.getArea(), 0.01 * roi.getArea(), "the classes do not tile the ROI");
            assertTrue(all.symDifference(roi).getArea() < 0.01 * roi.getArea(), "the classes do not tile the ROI");
        }
    }

    @Test
    void listModelsGivesTheDefaultModelWithClassesAndColours() {
        ServerInfo info = client.serverInfo();
        assertEquals(Conventions.CONTRACT_MAJOR, info.contractMajor());
        assertEquals(info.defaultModelId(), model.id());
        assertTrue(info.slidePathsAllowed());
        assertTrue(model.mpp() > 0 && model.tileSize() > 0);
        assertFalse(model.sha256().isEmpty());
        assertTrue(model.classes().size() >= 2, model.classes().toString());
        assertNotNull(model.classNamed(GLAND), "the default model has no class " + GLAND);
        Set<Integer> colours = new TreeSet<>();
        for (ClassDescription c : model.classes()) {
            assertFalse(c.name().isBlank());
            assertTrue(c.rgb() >= 0 && c.rgb() <= 0xFFFFFF);
            colours.add(c.rgb());
        }
        assertEquals(model.classes().size(), colours.size(), "two classes share a colour");
    }

    @Test
    void theCatchAllClassComesBackOnlyWhenAskedFor() throws IOException {
        // the default model's "Other tissue" is everything but gland: left out unless asked for
        ClassDescription other = model.classNamed("Other tissue");
        assertNotNull(other, model.classes().toString());
        assertTrue(other.catchAll());
        assertFalse(model.classNamed(GLAND).catchAll());
        RegionImage pixels = new RegionImage(glas("images", "train_1.png"), 0, 0, 1, GLAS_MPP);
        Geometry roi = RoisTest.box(20, 20, 500, 400);
        Set<String> glandsOnly = classesOf(client.segmentRegion(pixels, roi, SegmentOptions.defaults()).first());
        assertEquals(Set.of(GLAND), glandsOnly);
        Set<String> every = classesOf(client.segmentRegion(pixels, roi,
                SegmentOptions.builder().allClasses(true).build()).first());
        assertEquals(Set.of(GLAND, "Other tissue"), every);
        Set<String> named = classesOf(client.segmentRegion(pixels, roi,
                SegmentOptions.builder().classes("Other tissue").build()).first());
        assertEquals(Set.of("Other tissue"), named);
    }

    static Set<String> classesOf(ModelSegmentation m) {
        return m.features().stream().map(SegmentedFeature::className).collect(Collectors.toCollection(TreeSet::new));
    }

    @Test
    void aDownsampledRegionWithAnOriginLandsInFullResolutionCoordinates() throws IOException {
        // train_1 as if read at downsample 2 from a slide of 0.31 µm/px, its corner at (20000, 10000)
        BufferedImage image = glas("images", "train_1.png");
        BufferedImage mask = glas("masks", "train_1.png");
        double ox = 20000;
        double oy = 10000;
        Geometry roi = polygon(new double[] {20100, 10060, 21400, 10100, 21480, 10900, 20700, 11000, 20060, 10700});
        List<String> stages = new CopyOnWriteArrayList<>();
        SegmentResult result = client.segmentRegion(
                new RegionImage(image, ox, oy, 2, GLAS_MPP / 2).withFullImageSize(60000, 40000), roi,
                SegmentOptions.builder().includeBackground(true).allClasses(true).build(),
                (stage, modelId, done, total, message) -> stages.add(stage.name()), null);
        assertEquals(Set.of(model.id()), result.models().keySet());
        ModelSegmentation m = result.first();
        assertWellFormed(m, roi, true);
        assertTrue(stages.contains("INFERENCE") && stages.contains("VECTORIZING"), stages.toString());
        assertEquals(-1, m.execution().level());
        assertEquals(GLAS_MPP / 2, m.execution().sourceMpp(), 1e-9);
        assertEquals(model.mpp(), m.execution().mppUsed(), 0.02 * model.mpp());
        ExecutionSummary.Region r = m.execution().region();
        assertTrue(r.x() >= ox && r.y() >= oy && r.x() + r.width() <= ox + 2 * image.getWidth() + 4
                && r.y() + r.height() <= oy + 2 * image.getHeight() + 4, r.toString());
        for (SegmentedFeature f : m.features()) {
            double um2 = f.geometry().getArea() * (GLAS_MPP / 2) * (GLAS_MPP / 2);
            assertEquals(um2, f.measurements().get(Conventions.AREA_MEASUREMENT), 0.05 * um2 + 20);
        }

        // The glands are where the GlaS mask has them, in full-resolution coordinates; the same
        // polygons shifted by 120 full-resolution pixels agree much less.
        PreparedGeometry gland = PreparedGeometryFactory.prepare(union(m.features(), GLAND));
        PreparedGeometry background = PreparedGeometryFactory.prepare(
                union(m.features(), Conventions.BACKGROUND_CLASS));
        double agree = agreement(roi, gland, background, mask, ox, oy, 0);
        double shifted = agreement(roi, gland, background, mask, ox, oy, 120);
        System.out.printf("gland agreement with the GlaS mask: %.3f (shifted: %.3f)%n", agree, shifted);
        assertTrue(agree > 0.75, "gland agreement " + agree);
        assertTrue(agree > shifted + 0.1, "agreement " + agree + " vs shifted " + shifted);
    }

    @Test
    void confidenceMapsAndReviewFlagsComeWhenAskedFor() throws IOException {
        BufferedImage image = glas("images", "train_1.png");
        Geometry roi = polygon(new double[] {20, 20, 500, 40, 480, 400, 40, 380});
        RegionImage pixels = new RegionImage(image, 0, 0, 1, GLAS_MPP);
        assertNull(client.segmentRegion(pixels, roi, SegmentOptions.defaults()).first().confidence(),
                "no map unless asked for");
        ModelSegmentation m = client.segmentRegion(pixels, roi,
                SegmentOptions.builder().confidenceMap(true).reviewBelow(0.99).build()).first();
        ConfidenceMap map = m.confidence();
        assertNotNull(map);
        BufferedImage unsure = map.image();
        assertEquals(map.width(), unsure.getWidth());
        // the map covers the ROI's bounding box, at about the model's resolution
        assertEquals(20, map.originX(), 1.0 / GLAS_MPP + 1e-6);
        assertEquals(480, map.regionWidth(), 2.0 / GLAS_MPP);
        assertEquals(model.mpp(), map.downsampleX() * GLAS_MPP, 0.05);
        int sure = 0;
        int undecided = 0;
        for (int y = 0; y < unsure.getHeight(); y++) {
            for (int x = 0; x < unsure.getWidth(); x++) {
                int v = unsure.getRaster().getSample(x, y, 0);
                sure += v < 26 ? 1 : 0;
                undecided += v > 64 ? 1 : 0;
            }
        }
        int total = unsure.getWidth() * unsure.getHeight();
        assertTrue(sure > total / 2 && undecided > 0, "sure " + sure + ", unsure " + undecided + " of " + total);
        // with a review threshold of 0.99 nearly every object falls below it and is flagged
        long flagged = m.features().stream().filter(f -> f.name() != null && f.name().endsWith("(review)")).count();
        assertTrue(flagged > 0, m.features().toString());
    }

    @Test
    void aRoiPartlyOutsideTheImageIsSaidToBe() throws IOException {
        BufferedImage image = glas("images", "train_1.png");
        int width = image.getWidth();
        RegionImage pixels = new RegionImage(image, 0, 0, 1, GLAS_MPP, width, image.getHeight());
        ModelSegmentation inside = client.segmentRegion(pixels, RoisTest.box(100, 100, 400, 300),
                SegmentOptions.defaults()).first();
        assertEquals(List.of(), inside.notices());
        // 400 px wide, the last 100 beyond the image's right edge
        ModelSegmentation across = client.segmentRegion(pixels, RoisTest.box(width - 300, 100, width + 100, 300),
                SegmentOptions.defaults()).first();
        assertEquals(List.of("25.0 % of the ROI lies outside the image (" + width + " x " + image.getHeight()
                + " px) and was not segmented"), across.notices());
    }

    /** Fraction of tissue sample points where "inside a gland polygon" matches the mask. */
    static double agreement(Geometry roi, PreparedGeometry gland, PreparedGeometry background, BufferedImage mask,
                            double ox, double oy, double shiftX) {
        Random random = new Random(7);
        var env = roi.getEnvelopeInternal();
        int agree = 0;
        int total = 0;
        while (total < 3000) {
            double x = env.getMinX() + random.nextDouble() * env.getWidth();
            double y = env.getMinY() + random.nextDouble() * env.getHeight();
            var point = RoisTest.F.createPoint(new Coordinate(x, y));
            if (!roi.contains(point) || background.contains(point)) {
                continue;
            }
            int i = (int) ((x - ox) / 2);
            int j = (int) ((y - oy) / 2);
            if (i < 0 || j < 0 || i >= mask.getWidth() || j >= mask.getHeight()) {
                continue;
            }
            boolean maskGland = mask.getRaster().getSample(i, j, 0) > 127;
            // the gland polygons moved right by shiftX contain (x, y) if they contain (x - shiftX, y)
            boolean predicted = gland.contains(RoisTest.F.createPoint(new Coordinate(x - shiftX, y)));
            total++;
            if (predicted == maskGland) {
                agree++;
            }
        }
        return agree / (double) total;
    }

    @Test
    void noPolygonFallsInsideAHoleOfTheRoi() throws IOException {
        BufferedImage image = glas("images", "train_10.png");
        double ox = 5000;
        double oy = 7000;
        double[] hole = {5200, 7100, 5200, 7350, 5450, 7350, 5450, 7100};
        Geometry roi = polygon(new double[] {5020, 7020, 5740, 7020, 5740, 7500, 5020, 7500}, hole);
        ModelSegmentation m = client.segmentRegion(new RegionImage(image, ox, oy, 1, GLAS_MPP), roi,
                SegmentOptions.builder().includeBackground(true).allClasses(true).build()).first();
        assertWellFormed(m, roi, true);
        Geometry holeArea = polygon(hole);
        for (SegmentedFeature f : m.features()) {
            assertTrue(f.geometry().intersection(holeArea).getArea() < 0.01, "a " + f.className()
                    + " polygon covers " + f.geometry().intersection(holeArea).getArea() + " px² of the hole");
        }
    }

    @Test
    void theServerReadsASlideFileItself() {
        Path slide = PythonServer.repo().resolve("examples/data/cmu_small_region.svs");
        Geometry roi = RoisTest.box(900, 1200, 1700, 2000);
        ModelSegmentation m = client.segmentSlide(slide.toString(), 0, roi,
                SegmentOptions.builder().includeBackground(true).allClasses(true).build(), null, null).first();
        assertWellFormed(m, roi, true);
        assertEquals(0, m.execution().level());
        assertEquals(0.499, m.execution().sourceMpp(), 0.001);
        Geometry tissue = union(m.features(), GLAND).union(union(m.features(), "Other tissue"));
        assertTrue(tissue.getArea() > 0.2 * roi.getArea(), "little tissue found: " + tissue.getArea());
    }

    @Test
    void aLargeImageGoesThroughTheUpload() throws IOException {
        BufferedImage image = largeImage();
        int png = Png.encode(image).length;
        assertTrue(png > 4 << 20, "the test image is only " + png + " bytes as PNG");
        List<int[]> uploads = new CopyOnWriteArrayList<>();
        Geometry roi = RoisTest.box(40500, 30500, 41700, 31700);
        SegmentResult result;
        try (RoisegClient small = server.client().maxMessageBytes(4 << 20).build()) {
            result = small.segmentRegion(new RegionImage(image, 40000, 30000, 1, GLAS_MPP), roi,
                    SegmentOptions.builder().includeBackground(true).allClasses(true).build(),
                    (stage, modelId, done, total, message) -> {
                        if (stage == Stage.UPLOADING) {
                            uploads.add(new int[] {done, total});
                        }
                    }, null);
        }
        int chunks = (png + RoisegClient.UPLOAD_CHUNK_BYTES - 1) / RoisegClient.UPLOAD_CHUNK_BYTES;
        assertFalse(uploads.isEmpty(), "no upload happened");
        assertEquals(chunks, uploads.get(uploads.size() - 1)[0]);
        assertEquals(chunks, uploads.get(uploads.size() - 1)[1]);
        assertWellFormed(result.first(), roi, true);
    }

    @Test
    void cancellingDuringInferenceStopsAndTheServerAnswersAfterwards() throws IOException {
        BufferedImage image = largeImage();
        Geometry roi = RoisTest.box(0, 0, 3000, 3000);
        CancellationHandle handle = new CancellationHandle();
        AtomicLong cancelledAt = new AtomicLong();
        RoisegCancelledException e = assertTimeoutPreemptively(Duration.ofMinutes(5), () -> assertThrows(
                RoisegCancelledException.class, () -> client.segmentRegion(new RegionImage(image, 0, 0, 1, GLAS_MPP),
                        roi, null, (stage, modelId, done, total, message) -> {
                            if (stage == Stage.INFERENCE && total > 0 && cancelledAt.get() == 0) {
                                cancelledAt.set(System.nanoTime());
                                new Thread(handle::cancel).start();
                            }
                        }, handle)));
        assertTrue(cancelledAt.get() != 0, "inference never reported tiles");
        double seconds = (System.nanoTime() - cancelledAt.get()) / 1e9;
        System.out.printf("cancelled after %.2f s%n", seconds);
        assertTrue(seconds < 10, "cancelling took " + seconds + " s");
        assertEquals(Status.Code.CANCELLED, e.getStatusCode());

        assertEquals(model.id(), client.listModels().stream().filter(ModelDescription::isDefault).findFirst()
                .orElseThrow().id());
        // the server's single job slot is free again: a small segmentation goes through
        Geometry small = RoisTest.box(100, 100, 500, 400);
        assertWellFormed(client.segmentRegion(new RegionImage(glas("images", "train_2.png"), 0, 0, 1, GLAS_MPP),
                small, SegmentOptions.builder().includeBackground(true).allClasses(true).build()).first(), small, true);
    }

    // ------------------------------------------------------------------ errors, as the user sees them

    @Test
    void anUnknownModelIsNotFoundAndTheMessageListsTheAvailableOnes() throws IOException {
        RoisegException e = assertThrows(RoisegException.class, () -> client.segmentRegion(
                new RegionImage(glas("images", "train_3.png"), 0, 0, 1, GLAS_MPP), RoisTest.box(0, 0, 100, 100),
                SegmentOptions.builder().modelIds("no-such-model").build()));
        assertEquals(Status.Code.NOT_FOUND, e.getStatusCode());
        assertTrue(e.getUserMessage().contains("no-such-model"), e.getUserMessage());
        assertTrue(e.getUserMessage().contains(model.id()), e.getUserMessage());
    }

    @Test
    void aRoiOutsideTheImageIsAnInvalidArgument() throws IOException {
        RoisegException e = assertThrows(RoisegException.class, () -> client.segmentRegion(
                new RegionImage(glas("images", "train_3.png"), 0, 0, 1, GLAS_MPP).withFullImageSize(775, 522),
                RoisTest.box(5000, 5000, 5100, 5100), null));
        assertEquals(Status.Code.INVALID_ARGUMENT, e.getStatusCode());
        assertTrue(e.getUserMessage().contains("outside"), e.getUserMessage());
    }

    @Test
    void aMissingPixelSizeIsAnInvalidArgumentThatAsksForIt() throws IOException {
        RoisegException e = assertThrows(RoisegException.class, () -> client.segmentRegion(
                new RegionImage(glas("images", "train_3.png"), 0, 0, 1, Double.NaN), RoisTest.box(0, 0, 100, 100),
                null));
        assertEquals(Status.Code.INVALID_ARGUMENT, e.getStatusCode());
        assertTrue(e.getUserMessage().toLowerCase().contains("pixel size"), e.getUserMessage());

        Path uncalibrated = PythonServer.sharedData().resolve("slides/tcga-cr-7395-01a-01-ts1.svs");
        e = assertThrows(RoisegException.class, () -> client.segmentSlide(uncalibrated.toString(), 0,
                RoisTest.box(0, 0, 100, 100), null, null, null));
        assertEquals(Status.Code.INVALID_ARGUMENT, e.getStatusCode());
        assertTrue(e.getUserMessage().contains("pixel size"), e.getUserMessage());
    }

    @Test
    void aSlideOutsideTheServersFoldersIsRefused() {
        RoisegException e = assertThrows(RoisegException.class, () -> client.segmentSlide("/etc/hostname", 0,
                RoisTest.box(0, 0, 100, 100), null, null, null));
        assertEquals(Status.Code.PERMISSION_DENIED, e.getStatusCode());
        assertTrue(e.getUserMessage().contains("outside"), e.getUserMessage());
    }

    @Test
    void aServerThatIsNotRunningIsNotReachable() throws IOException {
        int port;
        try (ServerSocket socket = new ServerSocket(0)) {
            port = socket.getLocalPort();
        }
        try (RoisegClient closed = RoisegClient.builder().host("127.0.0.1").port(port).build()) {
            RoisegException e = assertThrows(RoisegException.class, closed::listModels);
            assertEquals(Status.Code.UNAVAILABLE, e.getStatusCode());
            assertEquals("The roiseg server at 127.0.0.1:" + port + " is not reachable. Is it running? Check "
                    + "Extensions > roiseg > Server settings.", e.getUserMessage());
        }
    }

    @Test
    void theServerRefusesAnotherContractVersion() {
        // Through the client the version always matches; the server's refusal is seen raw here.
        var channel = io.grpc.ManagedChannelBuilder.forAddress(server.host, server.port).usePlaintext().build();
        try {
            var stub = org.roiseg.proto.v1.SegmentationGrpc.newBlockingStub(channel);
            var request = org.roiseg.proto.v1.SegmentRequest.newBuilder().setClientContractMajor(2)
                    .setRoi(Rois.toProto(RoisTest.box(0, 0, 10, 10))).build();
            io.grpc.StatusRuntimeException raw = assertThrows(io.grpc.StatusRuntimeException.class,
                    () -> stub.segment(request).hasNext());
            RoisegException e = Errors.fromStatus(raw, server.target(), null);
            assertEquals(Status.Code.FAILED_PRECONDITION, e.getStatusCode());
            assertTrue(e.getUserMessage().contains("update the server"), e.getUserMessage());
        } finally {
            channel.shutdownNow();
        }
    }

}

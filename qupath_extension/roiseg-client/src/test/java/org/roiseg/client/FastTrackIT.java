package org.roiseg.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.gson.JsonArray;
import com.google.gson.JsonObject;
import io.grpc.Status;
import java.awt.image.BufferedImage;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.stream.Collectors;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.MethodOrderer;
import org.junit.jupiter.api.Order;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;
import org.junit.jupiter.api.TestMethodOrder;
import org.locationtech.jts.geom.Geometry;

/**
 * The fast track (docs/fast-track.md) through the Java client against the real Python server
 * started with {@code --dataset-dir}: the default model pre-annotates a real GlaS image, the
 * "pathologist" deletes one result and draws one object of their own, the corrections are
 * submitted, listed, resubmitted (replacing), a new version is fine-tuned in a few steps and
 * segments at once, becomes the default, and is retired again.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
@TestMethodOrder(MethodOrderer.OrderAnnotation.class)
class FastTrackIT {

    static final double MPP = SegmentationIT.GLAS_MPP;

    Path dataset;
    PythonServer server;
    RoisegClient client;
    ModelDescription model;
    String fineTunedId;

    @BeforeAll
    void start() throws Exception {
        dataset = Files.createTempDirectory("roiseg-fast-track-it");
        server = PythonServer.start(dataset);
        client = server.client().build();
        model = client.listModels().stream().filter(ModelDescription::isDefault).findFirst().orElseThrow();
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

    static Geometry roi(double x0, double y0, double x1, double y1) {
        return SegmentationIT.polygon(new double[] {x0, y0, x1, y0, x1, y1, x0, y1});
    }

    /** The results of a segmentation as a user leaves them: one deleted, one object of their own added. */
    String corrected(BufferedImage image, Geometry roi, String ownClass) {
        ModelSegmentation result = client.segmentRegion(new RegionImage(image, 0, 0, 1, MPP), roi,
                SegmentOptions.defaults()).first();
        assertTrue(result.features().size() >= 2, "too few results to correct: " + result.features().size());
        List<SegmentedFeature> kept = new ArrayList<>(result.features().subList(1, result.features().size()));
        var env = roi.getEnvelopeInternal();
        Geometry own = roi(env.getMinX() + 10, env.getMinY() + 10, env.getMinX() + 90, env.getMinY() + 70);
        ClassDescription c = model.classNamed(ownClass);
        kept.add(new SegmentedFeature(own, ownClass, c == null ? 0xFF0000 : c.rgb(), Map.of(), Map.of(),
                java.util.UUID.randomUUID().toString()));
        predictedObjects = result.features().size();
        return featureCollection(kept);
    }

    static String featureCollection(List<SegmentedFeature> features) {
        JsonArray array = new JsonArray();
        features.forEach(f -> array.add(GeoJsonFeatures.toJson(f)));
        JsonObject collection = new JsonObject();
        collection.addProperty("type", "FeatureCollection");
        collection.add("features", array);
        return collection.toString();
    }

    /** The number of objects the last {@link #corrected} segmentation predicted. */
    int predictedObjects;

    String otherClass() {
        return model.classes().stream().map(ClassDescription::name).filter(n -> !n.equals(SegmentationIT.GLAND))
                .findFirst().orElse(SegmentationIT.GLAND);
    }

    @Test
    @Order(1)
    void correctionsAreStoredListedAndReplaced() throws Exception {
        BufferedImage image = SegmentationIT.glas("images", "train_1.png");
        Geometry roi = roi(40, 40, image.getWidth() - 40, image.getHeight() - 40);
        String geojson = corrected(image, roi, otherClass());
        RegionImage pixels = new RegionImage(image, 0, 0, 1, MPP, image.getWidth(), image.getHeight());
        Corrections corrections = Corrections.of(model.id(), geojson, "glas/train_1", "roi-1");

        SubmittedCorrections first = client.submitCorrectionsRegion(pixels, roi, corrections, null, null);
        assertFalse(first.replaced());
        TrainingExample example = first.example();
        assertEquals(model.id(), example.modelId());
        assertEquals("glas/train_1", example.imageId());
        assertEquals("roi-1", example.roiKey());
        assertTrue(example.annotations() >= 2, example.toString());
        assertTrue(example.classAreas().stream().anyMatch(a -> a.name().equals(otherClass())), example.toString());
        assertTrue(example.rasterWidth() > 0 && example.rasterHeight() > 0 && example.mpp() > 0);
        // the server measured the correction against its record of the segmentation
        CorrectionEffort effort = example.effort();
        assertTrue(effort.measured(), effort.notMeasuredWhy());
        assertEquals("id", effort.matchedBy());
        CorrectionEffort.ClassCorrection total = effort.total().orElseThrow();
        assertEquals(List.of(predictedObjects, predictedObjects - 1, 1, 1),
                List.of(total.predictedObjects(), total.kept(), total.deleted(), total.added()), total.toString());
        assertTrue(total.dice() > 0 && total.dice() < 1 && total.addedUm2() > 0, total.toString());
        assertTrue(Files.isRegularFile(dataset.resolve(model.id()).resolve("records")
                .resolve(example.exampleId() + ".json")));

        List<TrainingExample> listed = client.listExamples(model.id());
        assertEquals(List.of(example.exampleId()), listed.stream().map(TrainingExample::exampleId).toList());

        SubmittedCorrections again = client.submitCorrectionsRegion(pixels, roi, corrections, null, null);
        assertTrue(again.replaced());
        assertEquals(example.exampleId(), again.example().exampleId());
        assertEquals(1, client.listExamples(model.id()).size());

        // a second ROI of another image, and one to remove
        BufferedImage second = SegmentationIT.glas("images", "train_2.png");
        Geometry roi2 = roi(20, 20, second.getWidth() - 20, second.getHeight() - 20);
        client.submitCorrectionsRegion(new RegionImage(second, 0, 0, 1, MPP), roi2,
                Corrections.of(model.id(), corrected(second, roi2, otherClass()), "glas/train_2", "roi-1"), null, null);
        TrainingExample extra = client.submitCorrectionsRegion(pixels, roi(100, 100, 300, 300),
                Corrections.of(model.id(), corrected(image, roi(100, 100, 300, 300), otherClass()), "glas/train_1",
                        "roi-2"), null, null).example();
        assertEquals(3, client.listExamples(model.id()).size());
        assertEquals(extra.exampleId(), client.removeExample(model.id(), extra.exampleId()).exampleId());
        assertEquals(2, client.listExamples(model.id()).size());
    }

    @Test
    @Order(2)
    void refusalsCarryTheServersMessage() throws Exception {
        BufferedImage image = SegmentationIT.glas("images", "train_1.png");
        Geometry roi = roi(40, 40, 400, 400);
        RegionImage pixels = new RegionImage(image, 0, 0, 1, MPP);
        String unknown = featureCollection(List.of(new SegmentedFeature(roi(50, 50, 150, 150), "Unicorn horn",
                0x00FF00, Map.of(), Map.of(), null)));
        RoisegException e = assertThrows(RoisegException.class, () -> client.submitCorrectionsRegion(pixels, roi,
                Corrections.of(model.id(), unknown, "glas/train_1", "roi-x"), null, null));
        assertEquals(Status.Code.INVALID_ARGUMENT, e.getStatusCode());
        assertTrue(e.getUserMessage().contains("Unicorn horn"), e.getUserMessage());
        assertThrows(IllegalArgumentException.class, () -> client.submitCorrectionsRegion(pixels, roi,
                Corrections.of(model.id(), unknown, "", "roi-x"), null, null));
        RoisegException missing = assertThrows(RoisegException.class,
                () -> client.removeExample(model.id(), "0123456789abcdef0123456789abcdef"));
        assertTrue(missing.getStatusCode() == Status.Code.NOT_FOUND || missing.getStatusCode() == Status.Code.INVALID_ARGUMENT,
                missing.getStatusCode().toString());
        RoisegException retireDefault = assertThrows(RoisegException.class,
                () -> client.retireVersion(model.id() + "@" + model.version()));
        assertEquals(Status.Code.FAILED_PRECONDITION, retireDefault.getStatusCode());
        assertFalse(retireDefault.getUserMessage().contains("contract"), retireDefault.getUserMessage());
    }

    @Test
    @Order(3)
    void fineTuningServesANewVersionAtOnce() throws Exception {
        List<FineTuneProgress> events = new CopyOnWriteArrayList<>();
        FineTuneResult result = client.fineTune(FineTuneOptions.of(model.id()).withSteps(1, 2).withBatch(2, 128),
                events::add, new CancellationHandle());
        List<String> stages = events.stream().map(FineTuneProgress::stage).collect(Collectors.toList());
        assertEquals("PREPARING", stages.get(0), stages.toString());
        assertEquals(2, stages.stream().filter("TRAINING"::equals).count(), stages.toString());
        assertTrue(stages.contains("EXPORTING") && stages.contains("REGISTERING"), stages.toString());
        assertTrue(events.stream().allMatch(p -> !p.describe().isEmpty()));
        fineTunedId = result.model().id();
        assertEquals(model.id() + "@" + model.version() + "-ft1", fineTunedId);
        assertEquals(model.id(), result.model().baseId());
        assertFalse(result.model().isDefaultVersion());
        assertEquals(2, result.exampleIds().size());
        assertEquals(2, result.steps());
        assertTrue(result.model().fineTunedFrom().startsWith(model.id() + "@" + model.version()));

        ModelDescription listed = client.listModels().stream().filter(m -> m.id().equals(model.id()))
                .findFirst().orElseThrow();
        assertEquals(model.version(), listed.version(), "the default changed without SetDefaultVersion");
        assertTrue(listed.versions().stream().anyMatch(v -> v.id().equals(fineTunedId)), listed.versions().toString());

        BufferedImage image = SegmentationIT.glas("images", "train_3.png");
        Geometry roi = roi(30, 30, 400, 400);
        SegmentResult both = client.segmentRegion(new RegionImage(image, 0, 0, 1, MPP), roi,
                SegmentOptions.builder().modelIds(model.id(), fineTunedId).build());
        assertEquals(result.model().version(), both.models().get(fineTunedId).modelVersion());
        assertEquals(model.version(), both.models().get(model.id()).modelVersion());
        assertFalse(both.models().get(fineTunedId).features().isEmpty());

        // chosen as the default, then the original again, then retired
        assertEquals(result.model().version(), client.setDefaultVersion(fineTunedId).version());
        assertEquals(result.model().version(), client.listModels().stream().filter(m -> m.id().equals(model.id()))
                .findFirst().orElseThrow().version());
        client.setDefaultVersion(model.id() + "@" + model.version());
        client.retireVersion(fineTunedId);
        assertFalse(client.listModels().stream().flatMap(m -> m.versions().stream())
                .anyMatch(v -> v.id().equals(fineTunedId)));
        RoisegException retired = assertThrows(RoisegException.class, () -> client.segmentRegion(
                new RegionImage(image, 0, 0, 1, MPP), roi, SegmentOptions.builder().modelIds(fineTunedId).build()));
        assertEquals(Status.Code.NOT_FOUND, retired.getStatusCode());
    }
}

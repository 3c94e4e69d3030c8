package org.roiseg.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.locationtech.jts.geom.Coordinate;
import org.locationtech.jts.geom.Geometry;

/** The shared vectors of tests/vectors/conventions.json, which the Python side checks too. */
class ConventionsVectorsTest {

    static JsonObject vectors;

    @BeforeAll
    static void load() throws IOException {
        String path = System.getProperty("roiseg.vectors");
        assertNotNull(path, "system property roiseg.vectors (set in the pom) names tests/vectors/conventions.json");
        vectors = JsonParser.parseString(Files.readString(Path.of(path), StandardCharsets.UTF_8)).getAsJsonObject();
    }

    @Test
    void constantsMatch() {
        JsonObject keys = vectors.getAsJsonObject("metadata_keys");
        assertEquals(keys.get("source").getAsString(), Conventions.ROISEG_SOURCE_KEY);
        assertEquals(keys.get("source_value").getAsString(), Conventions.ROISEG_SOURCE_VALUE);
        assertEquals(keys.get("model_id").getAsString(), Conventions.MODEL_ID_KEY);
        assertEquals(keys.get("model_version").getAsString(), Conventions.MODEL_VERSION_KEY);
        assertEquals(keys.get("run_id").getAsString(), Conventions.RUN_ID_KEY);
        JsonObject measurements = vectors.getAsJsonObject("measurements");
        assertEquals(measurements.get("area").getAsString(), Conventions.AREA_MEASUREMENT);
        assertEquals(measurements.get("probability").getAsString(), Conventions.PROBABILITY_MEASUREMENT);
        JsonObject background = vectors.getAsJsonObject("background");
        assertEquals(background.get("name").getAsString(), Conventions.BACKGROUND_CLASS);
        assertEquals(rgb(background.getAsJsonArray("color")), Conventions.BACKGROUND_RGB);
        JsonObject uncertainty = vectors.getAsJsonObject("uncertainty");
        assertEquals(rgb(uncertainty.getAsJsonArray("color")), Conventions.UNSURE_RGB);
        assertEquals(uncertainty.get("max_alpha").getAsDouble(), Conventions.UNSURE_MAX_ALPHA);
        assertEquals(uncertainty.get("full_at").getAsInt(), Conventions.UNSURE_FULL_AT);
    }

    @Test
    void everyTransformMapsBothWays() {
        JsonArray transforms = vectors.getAsJsonArray("transforms");
        assertFalse(transforms.isEmpty());
        for (JsonElement element : transforms) {
            JsonObject v = element.getAsJsonObject();
            JsonObject t = v.getAsJsonObject("transform");
            RasterTransform transform = new RasterTransform(t.get("origin_x").getAsDouble(),
                    t.get("origin_y").getAsDouble(), t.get("scale_x").getAsDouble(), t.get("scale_y").getAsDouble());
            JsonArray raster = v.getAsJsonArray("raster");
            JsonArray full = v.getAsJsonArray("full");
            Coordinate f = transform.toFull(raster.get(0).getAsDouble(), raster.get(1).getAsDouble());
            assertEquals(full.get(0).getAsDouble(), f.x, 1e-9, v.toString());
            assertEquals(full.get(1).getAsDouble(), f.y, 1e-9, v.toString());
            Coordinate r = transform.toRaster(full.get(0).getAsDouble(), full.get(1).getAsDouble());
            assertEquals(raster.get(0).getAsDouble(), r.x, 1e-9, v.toString());
            assertEquals(raster.get(1).getAsDouble(), r.y, 1e-9, v.toString());
            Geometry point = RoisTest.F.createPoint(new Coordinate(raster.get(0).getAsDouble(),
                    raster.get(1).getAsDouble()));
            Coordinate g = transform.geometryToFull(point).getCoordinate();
            assertEquals(full.get(0).getAsDouble(), g.x, 1e-9);
            assertEquals(full.get(1).getAsDouble(), g.y, 1e-9);
            Coordinate back = transform.geometryToRaster(transform.geometryToFull(point)).getCoordinate();
            assertEquals(raster.get(0).getAsDouble(), back.x, 1e-9);
            assertEquals(raster.get(1).getAsDouble(), back.y, 1e-9);
        }
    }

    @Test
    void everyFeatureParsesToItsInputAndWritesBack() {
        JsonArray features = vectors.getAsJsonArray("features");
        assertFalse(features.isEmpty());
        for (JsonElement element : features) {
            JsonObject input = element.getAsJsonObject().getAsJsonObject("input");
            JsonObject expected = element.getAsJsonObject().getAsJsonObject("feature");
            SegmentedFeature feature = GeoJsonFeatures.readFeature(expected);

            assertEquals(input.get("class_name").getAsString(), feature.className());
            assertEquals(rgb(input.getAsJsonArray("color")), feature.rgb());
            Map<String, Double> measurements = new LinkedHashMap<>();
            input.getAsJsonObject("measurements").entrySet()
                    .forEach(e -> measurements.put(e.getKey(), e.getValue().getAsDouble()));
            assertEquals(measurements, feature.measurements());
            Map<String, String> metadata = new LinkedHashMap<>(Conventions.objectMetadata(
                    input.get("model_id").getAsString(), input.get("model_version").getAsString()));
            metadata.put(Conventions.RUN_ID_KEY, input.get("run_id").getAsString());
            assertEquals(input.get("id").getAsString(), feature.id());
            assertEquals(metadata, feature.metadata());
            assertTrue(feature.isRoisegObject());
            Geometry geometry = GeoJsonFeatures.readGeometry(input.getAsJsonObject("geometry"));
            assertTrue(geometry.equalsExact(feature.geometry()), feature.geometry() + " vs " + geometry);
            assertTrue(feature.geometry().isValid());

            // The same feature written by this client is the vector's feature, key for key.
            JsonObject written = GeoJsonFeatures.toJson(new SegmentedFeature(geometry, input.get("class_name")
                    .getAsString(), rgb(input.getAsJsonArray("color")), measurements, metadata,
                    input.get("id").getAsString()));
            assertEquals(expected, written);
        }
    }

    @Test
    void roisegObjectsAreRecognisedByTheirMetadata() {
        JsonArray cases = vectors.getAsJsonArray("roiseg_objects");
        assertFalse(cases.isEmpty());
        for (JsonElement element : cases) {
            JsonObject properties = element.getAsJsonObject().getAsJsonObject("properties");
            Map<String, String> metadata = null;
            if (properties.has("metadata")) {
                metadata = new LinkedHashMap<>();
                for (var e : properties.getAsJsonObject("metadata").entrySet()) {
                    metadata.put(e.getKey(), e.getValue().getAsString());
                }
            }
            assertEquals(element.getAsJsonObject().get("is_roiseg").getAsBoolean(),
                    Conventions.isRoisegObject(metadata), element.toString());
        }
    }

    static int rgb(JsonArray color) {
        return Conventions.packRgb(color.get(0).getAsInt(), color.get(1).getAsInt(), color.get(2).getAsInt());
    }
}

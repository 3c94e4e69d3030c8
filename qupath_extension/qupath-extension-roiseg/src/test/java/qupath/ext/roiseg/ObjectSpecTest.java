package qupath.ext.roiseg;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.locationtech.jts.geom.Coordinate;
import org.locationtech.jts.geom.GeometryFactory;
import org.locationtech.jts.geom.Polygon;
import org.roiseg.client.ClassArea;
import org.roiseg.client.Conventions;
import org.roiseg.client.ModelSegmentation;
import org.roiseg.client.SegmentResult;
import org.roiseg.client.SegmentedFeature;

class ObjectSpecTest {

    static final GeometryFactory GF = new GeometryFactory();

    static Polygon square(double x, double y, double side) {
        return GF.createPolygon(new Coordinate[] {new Coordinate(x, y), new Coordinate(x + side, y),
            new Coordinate(x + side, y + side), new Coordinate(x, y + side), new Coordinate(x, y)});
    }

    static SegmentedFeature feature(String className, int rgb, Map<String, String> metadata) {
        Map<String, Double> measurements = new LinkedHashMap<>();
        measurements.put(Conventions.AREA_MEASUREMENT, 12.5);
        measurements.put("broken", Double.NaN);
        return new SegmentedFeature(square(0, 0, 10), className, rgb, measurements, metadata, null);
    }

    @Test
    void metadataAlwaysMarksRoisegObjects() {
        Map<String, String> metadata = new LinkedHashMap<>();
        metadata.put(Conventions.ROISEG_SOURCE_KEY, "tampered");
        metadata.put("extra", "kept");
        ObjectSpec spec = ObjectSpec.of(feature("Tumor", 0xC80000, metadata), "m1", "2.0", null);
        assertTrue(Conventions.isRoisegObject(spec.metadata()));
        assertEquals("m1", spec.metadata().get(Conventions.MODEL_ID_KEY));
        assertEquals("2.0", spec.metadata().get(Conventions.MODEL_VERSION_KEY));
        assertEquals("kept", spec.metadata().get("extra"));
        assertEquals(Map.of(Conventions.AREA_MEASUREMENT, 12.5), spec.measurements());
        assertEquals("Tumor", spec.className());
        assertEquals(0xC80000, spec.rgb());
        assertNull(spec.name());
    }

    @Test
    void serverMetadataWinsOverDefaults() {
        ObjectSpec spec = ObjectSpec.of(feature("Stroma", 0x00FF00,
                Map.of(Conventions.MODEL_VERSION_KEY, "from-server")), "m1", "2.0", null);
        assertEquals("from-server", spec.metadata().get(Conventions.MODEL_VERSION_KEY));
    }

    @Test
    void resultsBecomeSpecsModelByModel() {
        ModelSegmentation a = new ModelSegmentation("a", "1", "", List.of(feature("Tumor", 1, Map.of()),
                new SegmentedFeature(GF.createPolygon(), "Empty", 2, Map.of(), Map.of(), null)),
                List.of(new ClassArea("Tumor", 100, 1)), null, null, List.of());
        ModelSegmentation b = new ModelSegmentation("b", "1", "", List.of(feature(" ", 3, Map.of())), List.of(),
                null, null, List.of());
        Map<String, ModelSegmentation> models = new LinkedHashMap<>();
        models.put("a", a);
        models.put("b", b);
        List<ObjectSpec> specs = ObjectSpec.of(new SegmentResult(models), true);
        assertEquals(2, specs.size(), "the empty geometry is skipped");
        assertEquals("a", specs.get(0).name());
        assertEquals("b", specs.get(1).name());
        assertNull(specs.get(1).className(), "a blank class name means no class");
        assertEquals(List.of(), ObjectSpec.of(new SegmentResult(Map.of("b", b)), false).stream()
                .filter(s -> s.name() != null).toList());
    }

    @Test
    void colours() {
        assertEquals(0xFFC80000, ObjectSpec.argb(0xC80000));
        assertEquals(0xFF000000, ObjectSpec.argb(0xFF000000));
    }

    @Test
    void objectsFlaggedForReviewKeepTheServersNameUnlessNamedByModel() {
        SegmentedFeature flagged = new SegmentedFeature(square(0, 0, 10), "Gland epithelium", 1, Map.of(),
                Map.of("roiseg.review", "low confidence"), null, "Gland epithelium (review)");
        assertEquals("Gland epithelium (review)", ObjectSpec.of(flagged, "m", "1", null).name());
        assertEquals("m", ObjectSpec.of(flagged, "m", "1", "m").name());
        assertEquals("low confidence", ObjectSpec.of(flagged, "m", "1", null).metadata().get("roiseg.review"));
    }
}

package qupath.ext.roiseg;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.locationtech.jts.geom.Coordinate;
import org.locationtech.jts.geom.Geometry;
import org.locationtech.jts.geom.GeometryFactory;
import org.roiseg.client.Conventions;
import org.roiseg.client.GeoJsonFeatures;
import org.roiseg.client.SegmentedFeature;

class CorrectionFeaturesTest {

    static final GeometryFactory F = new GeometryFactory();

    static Geometry square(double x, double y, double side) {
        return F.createPolygon(new Coordinate[] {new Coordinate(x, y), new Coordinate(x + side, y),
            new Coordinate(x + side, y + side), new Coordinate(x, y + side), new Coordinate(x, y)});
    }

    static CorrectionFeatures.Child roiseg(String className, String modelId, double x) {
        return new CorrectionFeatures.Child(square(x, 0, 10), true, className, 0x00AAC8,
                Conventions.objectMetadata(modelId, "0.4.0"), "id-" + className + "-" + x);
    }

    static CorrectionFeatures.Child user(String className, double x) {
        return new CorrectionFeatures.Child(square(x, 0, 10), true, className, 0xFF000080, new HashMap<>(), null);
    }

    @Test
    void labelsAreTheClassifiedAreasRoisegsAndTheUsersAlike() {
        CorrectionFeatures.Child kept = roiseg("Gland epithelium", "glas", 0);
        CorrectionFeatures.Child added = user("Stroma", 20);
        CorrectionFeatures.Child unclassified = user(null, 40);
        CorrectionFeatures.Child line = new CorrectionFeatures.Child(
                F.createLineString(new Coordinate[] {new Coordinate(0, 0), new Coordinate(5, 5)}), false, "Stroma", 0,
                Map.of(), null);
        CorrectionFeatures.Child empty = new CorrectionFeatures.Child(F.createPolygon(), true, "Stroma", 0, Map.of(),
                null);
        List<CorrectionFeatures.Child> labels = CorrectionFeatures.labels(
                List.of(kept, unclassified, added, line, empty));
        assertEquals(List.of(kept, added), labels);
        assertEquals(1, CorrectionFeatures.roisegMade(labels));
    }

    @Test
    void theFeatureCollectionIsQuPathGeoJsonInTheLabelsOrder() {
        List<CorrectionFeatures.Child> labels = List.of(roiseg("Gland epithelium", "glas", 0), user("Stroma", 20));
        String json = CorrectionFeatures.featureCollection(labels);
        assertTrue(json.contains("\"FeatureCollection\""), json);
        List<SegmentedFeature> read = GeoJsonFeatures.read(json);
        assertEquals(2, read.size());
        assertEquals("Gland epithelium", read.get(0).className());
        assertEquals(0x00AAC8, read.get(0).rgb());
        assertTrue(read.get(0).isRoisegObject());
        assertEquals("glas", read.get(0).metadata().get(Conventions.MODEL_ID_KEY));
        assertEquals("id-Gland epithelium-0.0", read.get(0).id(), "the object's id goes with it");
        assertEquals("Stroma", read.get(1).className());
        assertEquals(0x000080, read.get(1).rgb(), "the alpha byte is dropped");
        assertTrue(read.get(1).metadata().isEmpty());
        assertEquals(100, read.get(1).geometry().getArea(), 1e-9);
        assertTrue(read.get(1).geometry().equalsExact(square(20, 0, 10), 1e-9));
    }

    @Test
    void theModelIsTheGivenOneElseTheOneThatMadeMostResultsElseTheChosenOne() {
        List<CorrectionFeatures.Child> labels = List.of(roiseg("A", "m1", 0), roiseg("B", "m2", 10),
                roiseg("A", "m2", 20), user("B", 30));
        assertEquals("given", CorrectionFeatures.modelId(" given ", labels, "chosen"));
        assertEquals("m2", CorrectionFeatures.modelId("", labels, "chosen"));
        assertEquals("chosen", CorrectionFeatures.modelId(null, List.of(user("B", 0)), "chosen"));
        assertEquals("", CorrectionFeatures.modelId("", List.of(), null));
    }
}

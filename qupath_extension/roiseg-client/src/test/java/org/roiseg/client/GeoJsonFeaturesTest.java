package org.roiseg.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.gson.JsonParser;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.locationtech.jts.geom.Geometry;
import org.locationtech.jts.geom.MultiPolygon;
import org.locationtech.jts.geom.Polygon;

class GeoJsonFeaturesTest {

    static final String COLLECTION = "{\"type\":\"FeatureCollection\",\"features\":["
            + "{\"type\":\"Feature\",\"geometry\":{\"type\":\"Polygon\",\"coordinates\":"
            + "[[[0,0],[10,0],[10,10],[0,10],[0,0]],[[2,2],[2,4],[4,4],[4,2],[2,2]]]},"
            + "\"properties\":{\"objectType\":\"annotation\",\"classification\":{\"name\":\"Gland epithelium\","
            + "\"color\":[200,40,40]},\"isLocked\":false,\"measurements\":{\"roiseg: predicted area \u00b5m^2\":96.0,"
            + "\"roiseg: mean class probability\":0.9},\"metadata\":{\"roiseg.source\":\"roiseg\","
            + "\"roiseg.model_id\":\"m\",\"roiseg.model_version\":\"1\"}}},"
            + "{\"type\":\"Feature\",\"geometry\":{\"type\":\"MultiPolygon\",\"coordinates\":"
            + "[[[[20,20],[30,20],[30,30],[20,30],[20,20]]],"
            + "[[[40,40],[60,40],[60,60],[40,60],[40,40]],[[45,45],[45,50],[50,50],[50,45],[45,45]]]]},"
            + "\"properties\":{\"classification\":{\"name\":\"Background\",\"color\":[255,255,255]},"
            + "\"measurements\":{\"roiseg: predicted area \u00b5m^2\":455.0},\"metadata\":{\"roiseg.source\":\"roiseg\"}}}]}";

    @Test
    void readsPolygonWithHoleAndMultiPolygon() {
        List<SegmentedFeature> features = GeoJsonFeatures.read(COLLECTION);
        assertEquals(2, features.size());

        SegmentedFeature gland = features.get(0);
        assertTrue(gland.geometry() instanceof Polygon);
        Polygon p = (Polygon) gland.geometry();
        assertEquals(1, p.getNumInteriorRing());
        assertEquals(100 - 4, p.getArea(), 1e-9);
        assertEquals("Gland epithelium", gland.className());
        assertEquals(0xC82828, gland.rgb());
        assertEquals(Map.of(Conventions.AREA_MEASUREMENT, 96.0, Conventions.PROBABILITY_MEASUREMENT, 0.9),
                gland.measurements());
        assertEquals("m", gland.metadata().get(Conventions.MODEL_ID_KEY));
        assertTrue(gland.isRoisegObject());

        SegmentedFeature background = features.get(1);
        assertTrue(background.geometry() instanceof MultiPolygon);
        assertEquals(2, background.geometry().getNumGeometries());
        assertEquals(100 + 400 - 25, background.geometry().getArea(), 1e-9);
        assertTrue(background.geometry().isValid());
        assertEquals(Conventions.BACKGROUND_CLASS, background.className());
        assertEquals(Conventions.BACKGROUND_RGB, background.rgb());
        assertFalse(background.geometry().contains(background.geometry().getFactory()
                .createPoint(new org.locationtech.jts.geom.Coordinate(47, 47))));
    }

    @Test
    void writesWhatItReads() {
        for (SegmentedFeature feature : GeoJsonFeatures.read(COLLECTION)) {
            SegmentedFeature again = GeoJsonFeatures.readFeature(GeoJsonFeatures.toJson(feature));
            assertTrue(feature.geometry().equalsExact(again.geometry()));
            assertEquals(feature.className(), again.className());
            assertEquals(feature.rgb(), again.rgb());
            assertEquals(feature.measurements(), again.measurements());
            assertEquals(feature.metadata(), again.metadata());
        }
    }

    @Test
    void closesUnclosedRingsAndReadsOtherGeometries() {
        Geometry g = GeoJsonFeatures.readGeometry(JsonParser.parseString(
                "{\"type\":\"Polygon\",\"coordinates\":[[[0,0],[4,0],[4,4],[0,4]]]}").getAsJsonObject());
        assertEquals(16, g.getArea(), 1e-12);
        assertEquals("LineString", GeoJsonFeatures.readGeometry(JsonParser.parseString(
                "{\"type\":\"LineString\",\"coordinates\":[[0,0],[4,0]]}").getAsJsonObject()).getGeometryType());
        assertEquals(2, GeoJsonFeatures.readGeometry(JsonParser.parseString(
                "{\"type\":\"GeometryCollection\",\"geometries\":[{\"type\":\"Point\",\"coordinates\":[1,2]},"
                        + "{\"type\":\"Polygon\",\"coordinates\":[]}]}").getAsJsonObject()).getNumGeometries());
    }

    @Test
    void emptyCollectionAndBadInput() {
        assertEquals(List.of(), GeoJsonFeatures.read("{\"type\":\"FeatureCollection\",\"features\":[]}"));
        assertThrows(IllegalArgumentException.class, () -> GeoJsonFeatures.read("{\"type\":\"Topology\"}"));
        assertThrows(IllegalArgumentException.class, () -> GeoJsonFeatures.read("{not json"));
        assertThrows(IllegalArgumentException.class, () -> GeoJsonFeatures.read(
                "{\"type\":\"Feature\",\"geometry\":{\"type\":\"Polygon\",\"coordinates\":[[[0,0],[1,1]]]}}"));
    }

    @Test
    void anObjectsNameIsReadAndWrittenBack() {
        var json = JsonParser.parseString("{\"type\": \"Feature\", \"id\": \"6f1c2b1e-2f5a-4c1e-9d8e-0a1b2c3d4e5f\","
                + " \"geometry\": {\"type\": \"Polygon\", \"coordinates\": [[[0, 0], [4, 0], [4, 4], [0, 0]]]},"
                + " \"properties\": {\"name\": \"Gland epithelium (review)\"}}").getAsJsonObject();
        SegmentedFeature feature = GeoJsonFeatures.readFeature(json);
        assertEquals("Gland epithelium (review)", feature.name());
        assertEquals("Gland epithelium (review)",
                GeoJsonFeatures.toJson(feature).getAsJsonObject("properties").get("name").getAsString());
    }
}

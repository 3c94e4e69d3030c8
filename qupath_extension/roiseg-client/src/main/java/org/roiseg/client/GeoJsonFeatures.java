package org.roiseg.client;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParseException;
import com.google.gson.JsonParser;
import com.google.gson.JsonPrimitive;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.locationtech.jts.geom.Coordinate;
import org.locationtech.jts.geom.Geometry;
import org.locationtech.jts.geom.GeometryFactory;
import org.locationtech.jts.geom.LineString;
import org.locationtech.jts.geom.LinearRing;
import org.locationtech.jts.geom.Point;
import org.locationtech.jts.geom.Polygon;

/**
 * Reads the QuPath GeoJSON features roiseg returns into {@link SegmentedFeature}s (JTS geometry,
 * class, colour, measurements, metadata), and writes them back in the same form.
 */
public final class GeoJsonFeatures {

    private static final GeometryFactory FACTORY = new GeometryFactory();

    private GeoJsonFeatures() {
    }

    /**
     * The features of a GeoJSON text: a FeatureCollection, a Feature or an array of Features.
     *
     * @throws IllegalArgumentException if the text is not such GeoJSON
     */
    public static List<SegmentedFeature> read(String geojson) {
        JsonElement root;
        try {
            root = JsonParser.parseString(geojson);
        } catch (JsonParseException e) {
            throw new IllegalArgumentException("not valid JSON: " + e.getMessage(), e);
        }
        List<SegmentedFeature> features = new ArrayList<>();
        collectFeatures(root, features);
        return features;
    }

    private static void collectFeatures(JsonElement element, List<SegmentedFeature> out) {
        if (element.isJsonArray()) {
            for (JsonElement item : element.getAsJsonArray()) {
                collectFeatures(item, out);
            }
            return;
        }
        JsonObject object = asObject(element, "GeoJSON");
        String type = string(object, "type");
        if ("FeatureCollection".equals(type)) {
            JsonElement features = object.get("features");
            if (features != null && !features.isJsonNull()) {
                collectFeatures(asArray(features, "features"), out);
            }
        } else if ("Feature".equals(type)) {
            out.add(readFeature(object));
        } else {
            throw new IllegalArgumentException("expected a FeatureCollection or Feature, got type " + type);
        }
    }

    /** One GeoJSON Feature with a geometry and QuPath properties. */
    public static SegmentedFeature readFeature(JsonObject feature) {
        JsonElement geometryElement = feature.get("geometry");
        if (geometryElement == null || geometryElement.isJsonNull()) {
            throw new IllegalArgumentException("a feature has no geometry");
        }
        Geometry geometry = readGeometry(asObject(geometryElement, "geometry"));
        JsonObject properties = optionalObject(feature, "properties");
        String className = null;
        int rgb = 0;
        JsonObject classification = properties == null ? null : optionalObject(properties, "classification");
        if (classification != null) {
            className = string(classification, "name");
            JsonElement color = classification.get("color");
            if (color != null && color.isJsonArray()) {
                rgb = readRgb(color.getAsJsonArray());
            }
        }
        Map<String, Double> measurements = new LinkedHashMap<>();
        JsonObject m = properties == null ? null : optionalObject(properties, "measurements");
        if (m != null) {
            for (Map.Entry<String, JsonElement> e : m.entrySet()) {
                measurements.put(e.getKey(), e.getValue().isJsonNull() ? Double.NaN : e.getValue().getAsDouble());
            }
        }
        Map<String, String> metadata = new LinkedHashMap<>();
        JsonObject md = properties == null ? null : optionalObject(properties, "metadata");
        if (md != null) {
            for (Map.Entry<String, JsonElement> e : md.entrySet()) {
                metadata.put(e.getKey(), e.getValue().isJsonNull() ? null : e.getValue().getAsString());
            }
        }
        JsonElement id = feature.get("id");
        String name = properties == null ? null : string(properties, "name");
        return new SegmentedFeature(geometry, className, rgb, measurements, metadata,
                id == null || id.isJsonNull() ? null : id.getAsString(), name);
    }

    /**
     * A GeoJSON geometry as JTS: Polygon (shell then holes) and MultiPolygon, as well as Point,
     * MultiPoint, LineString, MultiLineString and GeometryCollection. Unclosed rings are closed.
     */
    public static Geometry readGeometry(JsonObject geometry) {
        String type = string(geometry, "type");
        if ("GeometryCollection".equals(type)) {
            JsonArray members = asArray(geometry.get("geometries"), "geometries");
            Geometry[] parts = new Geometry[members.size()];
            for (int i = 0; i < parts.length; i++) {
                parts[i] = readGeometry(asObject(members.get(i), "geometry"));
            }
            return FACTORY.createGeometryCollection(parts);
        }
        JsonArray coordinates = asArray(geometry.get("coordinates"), type + " coordinates");
        switch (type == null ? "" : type) {
            case "Polygon":
                return polygon(coordinates);
            case "MultiPolygon": {
                Polygon[] polygons = new Polygon[coordinates.size()];
                for (int i = 0; i < polygons.length; i++) {
                    polygons[i] = polygon(asArray(coordinates.get(i), "polygon"));
                }
                return FACTORY.createMultiPolygon(polygons);
            }
            case "Point":
                return FACTORY.createPoint(coordinate(coordinates));
            case "MultiPoint": {
                Point[] points = new Point[coordinates.size()];
                for (int i = 0; i < points.length; i++) {
                    points[i] = FACTORY.createPoint(coordinate(asArray(coordinates.get(i), "point")));
                }
                return FACTORY.createMultiPoint(points);
            }
            case "LineString":
                return FACTORY.createLineString(coordinates(coordinates));
            case "MultiLineString": {
                LineString[] lines = new LineString[coordinates.size()];
                for (int i = 0; i < lines.length; i++) {
                    lines[i] = FACTORY.createLineString(coordinates(asArray(coordinates.get(i), "line")));
                }
                return FACTORY.createMultiLineString(lines);
            }
            default:
                throw new IllegalArgumentException("unsupported GeoJSON geometry type " + type);
        }
    }

    /** A feature as QuPath GeoJSON: an unlocked annotation with classification, measurements and metadata. */
    public static JsonObject toJson(SegmentedFeature feature) {
        JsonObject properties = new JsonObject();
        properties.addProperty("objectType", "annotation");
        if (feature.name() != null) {
            properties.addProperty("name", feature.name());
        }
        if (feature.className() != null) {
            JsonObject classification = new JsonObject();
            classification.addProperty("name", feature.className());
            classification.add("color", rgbArray(feature.rgb()));
            properties.add("classification", classification);
        }
        properties.addProperty("isLocked", false);
        JsonObject measurements = new JsonObject();
        feature.measurements().forEach(measurements::addProperty);
        properties.add("measurements", measurements);
        JsonObject metadata = new JsonObject();
        feature.metadata().forEach(metadata::addProperty);
        properties.add("metadata", metadata);
        JsonObject json = new JsonObject();
        json.addProperty("type", "Feature");
        if (feature.id() != null) {
            json.addProperty("id", feature.id());
        }
        json.add("geometry", geometryToJson(feature.geometry()));
        json.add("properties", properties);
        return json;
    }

    /** A Polygon or MultiPolygon as a GeoJSON geometry. */
    public static JsonObject geometryToJson(Geometry geometry) {
        JsonObject json = new JsonObject();
        if (geometry instanceof Polygon) {
            json.addProperty("type", "Polygon");
            json.add("coordinates", rings((Polygon) geometry));
        } else if (geometry instanceof org.locationtech.jts.geom.MultiPolygon) {
            json.addProperty("type", "MultiPolygon");
            JsonArray polygons = new JsonArray();
            for (int i = 0; i < geometry.getNumGeometries(); i++) {
                polygons.add(rings((Polygon) geometry.getGeometryN(i)));
            }
            json.add("coordinates", polygons);
        } else {
            throw new IllegalArgumentException("only Polygon and MultiPolygon are written, not "
                    + geometry.getGeometryType());
        }
        return json;
    }

    private static JsonArray rings(Polygon polygon) {
        JsonArray rings = new JsonArray();
        rings.add(positions(polygon.getExteriorRing()));
        for (int i = 0; i < polygon.getNumInteriorRing(); i++) {
            rings.add(positions(polygon.getInteriorRingN(i)));
        }
        return rings;
    }

    private static JsonArray positions(LineString line) {
        JsonArray positions = new JsonArray();
        for (Coordinate c : line.getCoordinates()) {
            JsonArray xy = new JsonArray();
            xy.add(c.x);
            xy.add(c.y);
            positions.add(xy);
        }
        return positions;
    }

    private static JsonArray rgbArray(int rgb) {
        JsonArray color = new JsonArray();
        color.add(new JsonPrimitive(Conventions.red(rgb)));
        color.add(new JsonPrimitive(Conventions.green(rgb)));
        color.add(new JsonPrimitive(Conventions.blue(rgb)));
        return color;
    }

    private static int readRgb(JsonArray color) {
        if (color.size() < 3) {
            throw new IllegalArgumentException("a colour needs 3 components, got " + color);
        }
        return Conventions.packRgb(color.get(0).getAsInt(), color.get(1).getAsInt(), color.get(2).getAsInt());
    }

    private static Polygon polygon(JsonArray rings) {
        if (rings.size() == 0) {
            return FACTORY.createPolygon();
        }
        LinearRing shell = ring(asArray(rings.get(0), "ring"));
        LinearRing[] holes = new LinearRing[rings.size() - 1];
        for (int i = 1; i < rings.size(); i++) {
            holes[i - 1] = ring(asArray(rings.get(i), "ring"));
        }
        return FACTORY.createPolygon(shell, holes);
    }

    private static LinearRing ring(JsonArray positions) {
        Coordinate[] coordinates = coordinates(positions);
        if (coordinates.length > 0 && !coordinates[0].equals2D(coordinates[coordinates.length - 1])) {
            Coordinate[] closed = java.util.Arrays.copyOf(coordinates, coordinates.length + 1);
            closed[coordinates.length] = coordinates[0].copy();
            coordinates = closed;
        }
        if (coordinates.length > 0 && coordinates.length < 4) {
            throw new IllegalArgumentException("a polygon ring needs at least 3 distinct points");
        }
        return FACTORY.createLinearRing(coordinates);
    }

    private static Coordinate[] coordinates(JsonArray positions) {
        Coordinate[] coordinates = new Coordinate[positions.size()];
        for (int i = 0; i < coordinates.length; i++) {
            coordinates[i] = coordinate(asArray(positions.get(i), "position"));
        }
        return coordinates;
    }

    private static Coordinate coordinate(JsonArray position) {
        if (position.size() < 2) {
            throw new IllegalArgumentException("a position needs x and y, got " + position);
        }
        return new Coordinate(position.get(0).getAsDouble(), position.get(1).getAsDouble());
    }

    private static JsonObject asObject(JsonElement element, String what) {
        if (element == null || !element.isJsonObject()) {
            throw new IllegalArgumentException(what + " must be a JSON object");
        }
        return element.getAsJsonObject();
    }

    private static JsonArray asArray(JsonElement element, String what) {
        if (element == null || !element.isJsonArray()) {
            throw new IllegalArgumentException(what + " must be a JSON array");
        }
        return element.getAsJsonArray();
    }

    private static JsonObject optionalObject(JsonObject parent, String key) {
        JsonElement element = parent.get(key);
        return element == null || element.isJsonNull() ? null : asObject(element, key);
    }

    private static String string(JsonObject object, String key) {
        JsonElement element = object.get(key);
        return element == null || element.isJsonNull() ? null : element.getAsString();
    }
}

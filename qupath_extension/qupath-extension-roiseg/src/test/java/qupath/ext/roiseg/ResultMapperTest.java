package qupath.ext.roiseg;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.locationtech.jts.geom.Geometry;
import org.locationtech.jts.geom.GeometryFactory;
import org.locationtech.jts.io.WKTReader;
import org.roiseg.client.Conventions;
import qupath.lib.common.ColorTools;
import qupath.lib.common.GeneralTools;
import qupath.lib.objects.PathObject;
import qupath.lib.objects.PathObjects;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.objects.hierarchy.PathObjectHierarchy;
import qupath.lib.objects.hierarchy.events.PathObjectHierarchyEvent;
import qupath.lib.regions.ImagePlane;
import qupath.lib.roi.GeometryTools;
import qupath.lib.roi.ROIs;

/** ResultMapper on QuPath's own hierarchy, classes and geometry factory (whichever version runs). */
class ResultMapperTest {

    private static PathObject annotation(double x, double y, double size, String name) {
        PathObject object = PathObjects.createAnnotationObject(ROIs.createRectangleROI(x, y, size, size,
                ImagePlane.getDefaultPlane()));
        object.setName(name);
        return object;
    }

    private static PathObject roisegObject(double x, double y, double size, String name) {
        PathObject object = annotation(x, y, size, name);
        object.getMetadata().putAll(Conventions.objectMetadata("m", "1"));
        return object;
    }

    /**
     * Whether QuPath's UndoRedoManager records an event as an undo step. QuPath 0.5:
     * {@code event.isChanging() || changed.stream().allMatch(ParallelTileObject)} skips it (so an empty
     * list is skipped); 0.6 and 0.7 skip only a non-empty list of ParallelTileObjects.
     */
    private static boolean recordedByUndo(PathObjectHierarchyEvent event) {
        if (event.isChanging()) {
            return false;
        }
        boolean before06 = ResultMapper.isBefore06(GeneralTools.getSemanticVersion());
        return !before06 || !event.getChangedObjects().isEmpty();
    }

    @Test
    void aRunIsOneUndoStepAndKeepsTheUsersObjects() {
        PathObjectHierarchy hierarchy = new PathObjectHierarchy();
        PathObject roi1 = annotation(0, 0, 1000, "roi1");
        PathObject roi2 = annotation(2000, 0, 1000, "roi2");
        PathObject mine = annotation(10, 10, 50, "mine");
        PathObject old = roisegObject(100, 100, 400, "old");
        PathObject nestedMine = annotation(150, 150, 20, "nested mine");
        hierarchy.addObjects(List.of(roi1, roi2));
        roi1.addChildObjects(List.of(mine, old));
        old.addChildObject(nestedMine);
        hierarchy.fireHierarchyChangedEvent(this);

        List<PathObjectHierarchyEvent> events = new ArrayList<>();
        hierarchy.addListener(events::add);
        PathObject new1 = roisegObject(200, 200, 100, "new1");
        PathObject new2 = roisegObject(2200, 200, 100, "new2");
        ResultMapper.Placement placement = ResultMapper.replaceChildren(hierarchy,
                Map.of(roi1, List.of(new1), roi2, List.of(new2)), this);

        assertEquals(2, placement.added());
        assertEquals(1, placement.removed());
        assertEquals(List.of("mine", "nested mine", "new1"), roi1.getChildObjects().stream().map(PathObject::getName)
                .sorted().toList());
        assertEquals(List.of(new2), List.copyOf(roi2.getChildObjects()));
        assertEquals(1, events.stream().filter(ResultMapperTest::recordedByUndo).count(),
                "events recorded as undo steps on QuPath " + GeneralTools.getVersion() + ": " + events);
        assertTrue(events.stream().anyMatch(PathObjectHierarchyEvent::isStructureChangeEvent),
                "listeners that follow the hierarchy's structure hear about it");
        // the hierarchy's spatial cache sees the new objects
        assertTrue(hierarchy.getObjectsForROI(null, new1.getROI()).contains(new1));
    }

    @Test
    void nothingToPlaceFiresNothing() {
        PathObjectHierarchy hierarchy = new PathObjectHierarchy();
        PathObject roi = annotation(0, 0, 100, "roi");
        hierarchy.addObject(roi);
        List<PathObjectHierarchyEvent> events = new ArrayList<>();
        hierarchy.addListener(events::add);
        ResultMapper.replaceChildren(hierarchy, Map.of(roi, List.of()), this);
        assertTrue(events.isEmpty(), events.toString());
    }

    @Test
    void resultsTakeQuPathsPrecisionModel() throws Exception {
        // what the client parses: a floating-precision polygon with a hole, off QuPath's 0.01 px grid
        Geometry floating = new WKTReader(new GeometryFactory()).read(
                "POLYGON ((0 0, 100.123456 0, 100.123456 80.987654, 0 80.987654, 0 0),"
                        + " (20 20, 40.0001 20, 40.0001 40, 20 40, 20 20))");
        ObjectSpec spec = new ObjectSpec(floating, null, 0, null, Map.of(), Conventions.objectMetadata("m", "1"), null);
        PathObject object = ResultMapper.createObjects(List.of(spec), ImagePlane.getDefaultPlane()).get(0);
        Geometry placed = object.getROI().getGeometry();
        assertEquals(GeometryTools.getDefaultFactory().getPrecisionModel(), placed.getPrecisionModel());
        assertTrue(placed.isValid());
        assertEquals(floating.getArea(), placed.getArea(), 0.1);
        assertEquals(1, ((org.locationtech.jts.geom.Polygon) placed).getNumInteriorRing());
    }

    @Test
    void objectsTakeTheServersIdSoCorrectionsCanBeTracedToTheirPrediction() throws Exception {
        Geometry square = new WKTReader(new GeometryFactory()).read("POLYGON ((0 0, 10 0, 10 10, 0 10, 0 0))");
        String id = "6f1c2b1e-2f5a-4c1e-9d8e-0a1b2c3d4e5f";
        List<PathObject> objects = ResultMapper.createObjects(List.of(
                new ObjectSpec(square, null, 0, null, Map.of(), Map.of(), id),
                new ObjectSpec(square, null, 0, null, Map.of(), Map.of(), "not-a-uuid"),
                new ObjectSpec(square, null, 0, null, Map.of(), Map.of(), null)), ImagePlane.getDefaultPlane());
        assertEquals(java.util.UUID.fromString(id), objects.get(0).getID());
        assertNotEquals(objects.get(1).getID(), objects.get(2).getID());  // QuPath chose fresh ids
        assertNotEquals(java.util.UUID.fromString(id), objects.get(1).getID());
    }

    @Test
    void existingClassesKeepTheirColour() {
        int stroma = PathClass.StandardPathClasses.STROMA.getColor();
        assertSame(PathClass.StandardPathClasses.STROMA, ResultMapper.pathClass("Stroma", 0x50A050));
        assertEquals(stroma, PathClass.StandardPathClasses.STROMA.getColor(), "QuPath's Stroma was recoloured");

        String name = "roiseg test class " + System.nanoTime();
        PathClass created = ResultMapper.pathClass(name, 0x00AACC);
        assertEquals(ColorTools.packRGB(0x00, 0xAA, 0xCC) & 0xFFFFFF, created.getColor() & 0xFFFFFF);
        created.setColor(1, 2, 3);  // the user recolours it
        ResultMapper.pathClass(name, 0x00AACC);
        assertEquals(ColorTools.packRGB(1, 2, 3) & 0xFFFFFF, created.getColor() & 0xFFFFFF);
    }
}

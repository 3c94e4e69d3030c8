package qupath.ext.roiseg;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.net.URI;
import java.util.List;
import org.junit.jupiter.api.Test;

class SlidePathsTest {

    @Test
    void oneLocalFileIsItsPath() {
        assertEquals("/data/slides/a b.svs",
                SlidePaths.serverPath(List.of(URI.create("file:/data/slides/a%20b.svs")), "", "").orElseThrow());
    }

    @Test
    void otherImagesHaveNoServerPath() {
        assertTrue(SlidePaths.serverPath(List.of(), "", "").isEmpty());
        assertTrue(SlidePaths.serverPath(null, "", "").isEmpty());
        assertTrue(SlidePaths.serverPath(List.of(URI.create("file:/a.svs"), URI.create("file:/b.svs")), "", "")
                .isEmpty());
        assertTrue(SlidePaths.serverPath(List.of(URI.create("https://omero.example.org/webclient/?show=image-1")),
                "", "").isEmpty());
        assertTrue(SlidePaths.serverPath(List.of(URI.create("file:/data/a.vsi#series=2")), "", "").isEmpty());
    }

    @Test
    void prefixesAreMapped() {
        assertEquals("/data/slides/case1/a.svs",
                SlidePaths.mapPrefix("/Volumes/slides/case1/a.svs", "/Volumes/slides/", "/data/slides"));
        assertEquals("/data/slides/case1/a.svs",
                SlidePaths.serverPath(List.of(URI.create("file:/Volumes/slides/case1/a.svs")), "/Volumes/slides",
                        "/data/slides/").orElseThrow());
        // only at a path boundary
        assertEquals("/Volumes/slides2/a.svs", SlidePaths.mapPrefix("/Volumes/slides2/a.svs", "/Volumes/slides",
                "/data"));
        // Windows client to Linux server, and back
        assertEquals("/data/slides/case1/a.svs",
                SlidePaths.mapPrefix("S:\\slides\\case1\\a.svs", "S:\\slides", "/data/slides"));
        assertEquals("D:\\slides\\a.svs", SlidePaths.mapPrefix("/mnt/slides/a.svs", "/mnt/slides", "D:\\slides"));
        assertEquals("/a/b.svs", SlidePaths.mapPrefix("/a/b.svs", " ", "/x"));
    }
}

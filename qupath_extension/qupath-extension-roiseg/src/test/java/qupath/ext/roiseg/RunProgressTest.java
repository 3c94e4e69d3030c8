package qupath.ext.roiseg;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;
import org.roiseg.client.Stage;

class RunProgressTest {

    @Test
    void fractionsAcrossAnnotations() {
        RunProgress p = new RunProgress(2);
        p.startRoi(0);
        assertEquals(0.0, p.fraction(), 0);
        double half = p.update(Stage.INFERENCE, 5, 10);
        assertEquals((0.2 + 0.65 * 0.5) / 2, half, 1e-12);
        // a second model restarts its stages: the bar does not go back
        assertEquals(half, p.update(Stage.READING, 0, 0), 0);
        p.finishRoi();
        assertEquals(0.5, p.fraction(), 1e-12);
        p.startRoi(1);
        p.update(Stage.VECTORIZING, 0, 0);
        assertTrue(p.fraction() > 0.9);
        p.finishRoi();
        assertEquals(1.0, p.fraction(), 1e-12);
    }

    @Test
    void messages() {
        RunProgress p = new RunProgress(3);
        p.startRoi(1);
        assertEquals("Annotation 2 of 3: m: inference 4/9", p.message(Stage.INFERENCE, "m", 4, 9, "tiles"));
        assertEquals("uploading 1/2 \u2013 uploading the image (3 MiB)",
                new RunProgress(1).message(Stage.UPLOADING, "", 1, 2, "uploading the image (3 MiB)"));
    }
}

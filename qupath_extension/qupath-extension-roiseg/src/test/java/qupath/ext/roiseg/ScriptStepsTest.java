package qupath.ext.roiseg;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.List;
import org.junit.jupiter.api.Test;

class ScriptStepsTest {

    @Test
    void scripts() {
        assertEquals("qupath.ext.roiseg.RoisegScripts.segmentAnnotations(getCurrentImageData(), "
                + "getSelectedObjects(), 0, 'model-a')", ScriptSteps.segmentScript(true, 0, List.of("model-a")));
        assertEquals("qupath.ext.roiseg.RoisegScripts.segmentAnnotations(getCurrentImageData(), "
                + "getAnnotationObjects(), 0.25)", ScriptSteps.segmentScript(false, 0.25, List.of()));
        assertEquals("qupath.ext.roiseg.RoisegScripts.segmentAnnotations(getCurrentImageData(), "
                + "getSelectedObjects(), 0, 'a', 'b')", ScriptSteps.segmentScript(true, Double.NaN, List.of("a", "b")));
    }

    @Test
    void groovyStringsAreEscaped() {
        assertEquals("'it\\'s \\\\ $x\\n'", ScriptSteps.groovyString("it's \\ $x\n"));
    }
}

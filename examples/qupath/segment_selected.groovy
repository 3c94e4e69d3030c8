/*
 * roiseg: segment the selected annotations of the open image with a roiseg server, from QuPath's
 * script editor, using the roiseg client that the extension jar carries (org.roiseg.client).
 *
 * How to run it
 *  1. Start a server, e.g. from the roiseg repository: `make install`, then
 *       .venv/bin/roiseg serve                  (127.0.0.1:50051, embedded default model)
 *  2. Drag qupath-extension-roiseg-<version>.jar onto QuPath's main window once (QuPath copies it to
 *     its extensions folder; restart QuPath if it asks). Without the jar, the imports below fail.
 *  3. Open an image, select one or more area annotations (rectangle, ellipse, polygon or brush,
 *     holes allowed), open Automate > Script editor, open this file and press Run.
 *
 * Results become unlocked child annotations of each selected annotation, with the model's class,
 * colour, measurements and metadata, placed by the extension's own ResultMapper: all of them in one
 * step (Edit > Undo takes them back), never recolouring a class QuPath already has. Running it
 * again replaces only roiseg's earlier results under that annotation, never your own objects.
 *
 * The menu Extensions > roiseg does the same with a progress window and Cancel; this script shows
 * the client API. For a whole project, use Run > Run for project with the extension's one-liner:
 *     qupath.ext.roiseg.RoisegScripts.segmentAnnotations(getCurrentImageData(), getAnnotationObjects(), 0)
 * (server settings from Extensions > roiseg > Server settings).
 */
import org.roiseg.client.Conventions
import org.roiseg.client.ProgressListener
import org.roiseg.client.RegionImage
import org.roiseg.client.RoisegClient
import org.roiseg.client.RoisegException
import org.roiseg.client.SegmentOptions
import qupath.ext.roiseg.ObjectSpec
import qupath.ext.roiseg.ResultMapper
import qupath.ext.roiseg.ui.ClassList
import qupath.lib.objects.PathObject
import qupath.lib.regions.RegionRequest

// ---- settings -------------------------------------------------------------------------------
def host = '127.0.0.1'
def port = 50051
def token = ''                  // access token if the server was started with --token-file
def useTls = false
def modelIds = []               // [] = the server's default model; several ids compare models
double pixelSizeIfUncalibrated = 0   // µm/px for an image without a pixel size (0: refuse)
// ---------------------------------------------------------------------------------------------

def imageData = getCurrentImageData()
if (imageData == null) {
    println 'roiseg: open an image first'
    return
}
def server = imageData.getServer()
// getSelectedObjects() is a Collection (a set): keep it one
Collection<PathObject> rois = getSelectedObjects().findAll {
    it.isAnnotation() && it.hasROI() && it.getROI().isArea() && !Conventions.isRoisegObject(it.getMetadata())
}
if (rois.isEmpty()) {
    println 'roiseg: select one or more area annotations first'
    return
}
def calibration = server.getPixelCalibration()
double pixelSize = calibration.hasPixelSizeMicrons() ? calibration.getAveragedPixelSizeMicrons() : pixelSizeIfUncalibrated
if (!(pixelSize > 0)) {
    println 'roiseg: the image has no pixel size; set it in the Image tab, or set pixelSizeIfUncalibrated above'
    return
}

def client = RoisegClient.builder().host(host).port(port).tls(useTls).bearerToken(token).build()
try {
    def models = client.listModels()
    def chosen = modelIds ? models.findAll { it.id() in modelIds } : models.findAll { it.isDefault() }
    if (chosen.isEmpty()) {
        println "roiseg: the server has none of the models ${modelIds}; it has ${models*.id()}"
        return
    }
    // read the pixels at the finest model resolution, never upsampled here
    double downsample = Math.max(1.0, chosen*.mpp().min() / pixelSize)
    def options = SegmentOptions.builder().modelIds(chosen*.id()).build()
    def progress = { stage, modelId, done, total, message ->
        println "  ${stage} ${modelId} ${total > 0 ? done + '/' + total : ''} ${message}"
    } as ProgressListener

    Map<PathObject, List<PathObject>> results = [:]
    for (PathObject parent in rois) {
        def roi = parent.getROI()
        // the ROI's bounding box on its own z/t plane, clipped to the image
        def request = RegionRequest.createInstance(server.getPath(), downsample, roi)
                .intersect2D(0, 0, server.getWidth(), server.getHeight())
        def region = new RegionImage(server.readRegion(request), request.getX(), request.getY(),
                request.getDownsample(), pixelSize, server.getWidth(), server.getHeight())
        println "roiseg: ${parent} at downsample ${String.format('%.3f', downsample)}"
        // roi.getGeometry() keeps holes (brush and polygon ROIs)
        def result = client.segmentRegion(region, roi.getGeometry(), options, progress, null)
        // QuPath annotations with the model's class, measurements and metadata; named after their
        // model when several models ran
        results[parent] = ResultMapper.createObjects(ObjectSpec.of(result, chosen.size() > 1), roi.getImagePlane())
    }
    // all results in one change of the hierarchy, replacing only roiseg's earlier results
    def placed = ResultMapper.replaceChildren(imageData.getHierarchy(), results, this)
    ClassList.add(placed.classes())
    println "roiseg: ${placed.added()} objects added, ${placed.removed()} earlier roiseg objects replaced"
} catch (RoisegException e) {
    println 'roiseg: ' + e.getUserMessage()
} finally {
    client.close()
}

package org.roiseg.client;

import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.stream.Collectors;
import org.roiseg.proto.v1.ModelInfo;

/**
 * A model the server can run.
 *
 * @param id            model id, used in {@link SegmentOptions.Builder#modelIds}
 * @param name          name for people
 * @param description   what the model segments
 * @param version       model version
 * @param sha256        SHA-256 of the model's checkpoint file
 * @param architecture  network architecture, e.g. "Unet"
 * @param encoder       encoder, e.g. "mobilenet_v2"
 * @param mpp           input resolution in µm per pixel
 * @param tileSize      tile side in pixels at model resolution
 * @param overlap       tile overlap in pixels at model resolution
 * @param classes       output classes, in channel order
 * @param trainedOn     what data the model was trained on
 * @param tumorClass    class that hysteresis thresholding applies to; empty if none
 * @param metrics       validation figures from the model card
 * @param isDefault     whether the server uses this model when a request names none
 * @param versions      every servable version of the model (each with id {@code id@version}, the
 *                      default one included); empty from servers of contract 1.0 and on versions themselves
 * @param fineTunedFrom {@code id@version (sha256)} of the model this version was fine-tuned from; empty if none
 * @param isDefaultVersion whether the model's plain id selects this version
 */
public record ModelDescription(String id, String name, String description, String version, String sha256,
                               String architecture, String encoder, double mpp, int tileSize, int overlap,
                               List<ClassDescription> classes, String trainedOn, String tumorClass,
                               Map<String, String> metrics, boolean isDefault,
                               List<ModelDescription> versions, String fineTunedFrom, boolean isDefaultVersion) {

    /** Makes the lists and maps unmodifiable. */
    public ModelDescription {
        classes = List.copyOf(classes);
        versions = versions == null ? List.of() : List.copyOf(versions);
        fineTunedFrom = fineTunedFrom == null ? "" : fineTunedFrom;
        metrics = java.util.Collections.unmodifiableMap(new TreeMap<>(metrics));
    }

    /** A model without versions (as a contract 1.0 server describes it). */
    public ModelDescription(String id, String name, String description, String version, String sha256,
                            String architecture, String encoder, double mpp, int tileSize, int overlap,
                            List<ClassDescription> classes, String trainedOn, String tumorClass,
                            Map<String, String> metrics, boolean isDefault) {
        this(id, name, description, version, sha256, architecture, encoder, mpp, tileSize, overlap, classes,
                trainedOn, tumorClass, metrics, isDefault, List.of(), "", true);
    }

    static ModelDescription fromProto(ModelInfo info, String defaultModelId) {
        return new ModelDescription(info.getId(), info.getName(), info.getDescription(), info.getVersion(),
                info.getCheckpointSha256(), info.getArchitecture(), info.getEncoder(), info.getMpp(),
                info.getTileSize(), info.getOverlap(),
                info.getClassesList().stream().map(ClassDescription::fromProto).collect(Collectors.toList()),
                info.getTrainedOn(), info.getTumorClass(), info.getMetricsMap(),
                info.getId().equals(defaultModelId),
                info.getVersionsList().stream().map(v -> fromProto(v, defaultModelId)).collect(Collectors.toList()),
                info.getFineTunedFrom(), info.getIsDefaultVersion() || !info.getId().contains("@"));
    }

    /** The model's id without a version: the part before {@code @}. */
    public String baseId() {
        int at = id.indexOf('@');
        return at < 0 ? id : id.substring(0, at);
    }

    /** The class called {@code className}, or null. */
    public ClassDescription classNamed(String className) {
        return classes.stream().filter(c -> c.name().equals(className)).findFirst().orElse(null);
    }
}

//! Rewriting an asset's manifests for Content Steering: pure functions of the manifest text,
//! the pathways (one per edge) and the steering server's URI. Every input is untrusted (it
//! comes from an edge); errors, never panics.
//!
//! HLS (RFC 8216bis, Content Steering): `#EXT-X-CONTENT-STEERING:SERVER-URI=...,PATHWAY-ID=...`
//! and every variant (`EXT-X-STREAM-INF`, `EXT-X-I-FRAME-STREAM-INF`) once per pathway with
//! `PATHWAY-ID` and an absolute URI on that pathway's edge. Renditions (`EXT-X-MEDIA`) are
//! repeated per pathway too, in rendition groups renamed `<group>.<pathway>` so that each
//! pathway's variants reference only that pathway's renditions.
//!
//! DASH (DASH-IF Content Steering): `<ContentSteering defaultServiceLocation=...
//! queryBeforeStart="true">URI</ContentSteering>` and one MPD-level
//! `<BaseURL serviceLocation="<pathway>">` per pathway; the MPD's own MPD-level `BaseURL` and
//! `ContentSteering` elements are dropped. Relative URLs deeper in the MPD resolve against the
//! chosen BaseURL.

use m3u8_rs::{ClosedCaptionGroupId, ExtTag, QuotedOrUnquoted};
use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};

/// One pathway: an edge and the URL its copy of the asset's folder is reached at (signed,
/// ending in `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pathway {
    /// `PATHWAY-ID` / `serviceLocation`: `[A-Za-z0-9._-]+`.
    pub id: String,
    /// For example `https://edge1:443/t/<token>/v/movie/`.
    pub base: url::Url,
}

/// Why a manifest could not be rewritten.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    #[error("no pathway to steer to")]
    NoPathways,
    #[error("a pathway id must be 1-64 of A-Z a-z 0-9 . - _")]
    BadPathwayId,
    #[error("not an HLS multivariant playlist")]
    NotMultivariant,
    #[error("the multivariant playlist has no variant")]
    NoVariants,
    #[error("a URI in the manifest cannot be resolved: {0}")]
    BadUri(String),
    #[error("not a DASH MPD: {0}")]
    NotMpd(String),
}

fn check_pathways(pathways: &[Pathway]) -> Result<(), ManifestError> {
    if pathways.is_empty() {
        return Err(ManifestError::NoPathways);
    }
    if !pathways
        .iter()
        .all(|p| estuary_common::config::name_ok(&p.id))
    {
        return Err(ManifestError::BadPathwayId);
    }
    Ok(())
}

fn resolve(base: &url::Url, uri: &str) -> Result<String, ManifestError> {
    base.join(uri)
        .map(String::from)
        .map_err(|_| ManifestError::BadUri(uri.chars().take(80).collect()))
}

fn quoted_attr_ok(s: &str) -> bool {
    !s.contains(['"', '\r', '\n'])
}

/// Rewrites an HLS multivariant playlist for Content Steering over `pathways` (the first is
/// the default), with `server_uri` the steering server's URI.
pub fn steer_hls(
    text: &str,
    pathways: &[Pathway],
    server_uri: &str,
) -> Result<String, ManifestError> {
    check_pathways(pathways)?;
    if !quoted_attr_ok(server_uri) {
        return Err(ManifestError::BadUri(server_uri.chars().take(80).collect()));
    }
    let master = m3u8_rs::parse_master_playlist_res(text.as_bytes())
        .map_err(|_| ManifestError::NotMultivariant)?;
    // A media playlist parses as a multivariant one without variants.
    if master.variants.is_empty() {
        return Err(ManifestError::NoVariants);
    }
    let renamed = |group: &str, p: &Pathway| format!("{group}.{}", p.id);
    let mut out = master.clone();
    out.variants.clear();
    out.alternatives.clear();
    out.unknown_tags
        .retain(|t| !t.tag.eq_ignore_ascii_case("X-CONTENT-STEERING"));
    for p in pathways {
        for alt in &master.alternatives {
            let mut a = alt.clone();
            a.group_id = renamed(&alt.group_id, p);
            if let Some(uri) = &alt.uri {
                a.uri = Some(resolve(&p.base, uri)?);
            }
            for s in [&a.group_id, &a.name] {
                if !quoted_attr_ok(s) {
                    return Err(ManifestError::BadUri(s.chars().take(80).collect()));
                }
            }
            out.alternatives.push(a);
        }
        for variant in &master.variants {
            let mut v = variant.clone();
            v.uri = resolve(&p.base, &variant.uri)?;
            for group in [&mut v.audio, &mut v.video, &mut v.subtitles]
                .into_iter()
                .flatten()
            {
                *group = renamed(group, p);
            }
            if let Some(ClosedCaptionGroupId::GroupId(g)) = &variant.closed_captions {
                v.closed_captions = Some(ClosedCaptionGroupId::GroupId(renamed(g, p)));
            }
            let mut attrs = v.other_attributes.take().unwrap_or_default();
            attrs.insert(
                "PATHWAY-ID".to_owned(),
                QuotedOrUnquoted::Quoted(p.id.clone()),
            );
            v.other_attributes = Some(attrs);
            out.variants.push(v);
        }
    }
    out.unknown_tags.push(ExtTag {
        tag: "X-CONTENT-STEERING".to_owned(),
        rest: Some(format!(
            "SERVER-URI=\"{server_uri}\",PATHWAY-ID=\"{}\"",
            pathways[0].id
        )),
    });
    let mut buf = Vec::new();
    out.write_to(&mut buf)
        .map_err(|e| ManifestError::BadUri(e.to_string()))?;
    String::from_utf8(buf).map_err(|_| ManifestError::NotMultivariant)
}

/// Rewrites a DASH MPD for Content Steering over `pathways` (the first is the default), with
/// `server_uri` the steering server's URI.
pub fn steer_dash(
    text: &str,
    pathways: &[Pathway],
    server_uri: &str,
) -> Result<String, ManifestError> {
    check_pathways(pathways)?;
    let mut reader = quick_xml::Reader::from_str(text);
    let mut writer = quick_xml::Writer::new(Vec::with_capacity(text.len() + 512));
    let xml_err = |e: &dyn std::fmt::Display| ManifestError::NotMpd(e.to_string());
    // Depth in the element tree; 1 = inside <MPD>.
    let mut depth: usize = 0;
    let mut seen_mpd = false;
    let mut injected = false;
    // While > 0: inside an MPD-level element being dropped (its depth).
    let mut skipping: usize = 0;
    loop {
        let event = reader.read_event().map_err(|e| xml_err(&e))?;
        match &event {
            Event::Eof => break,
            Event::Start(e) => {
                depth += 1;
                if skipping > 0 {
                    continue;
                }
                let name = e.local_name();
                let name = name.as_ref();
                if depth > 1 && name == b"MPD" {
                    return Err(ManifestError::NotMpd("an <MPD> inside the <MPD>".into()));
                }
                if depth == 1 {
                    if name != b"MPD" || seen_mpd {
                        return Err(ManifestError::NotMpd("the root is not <MPD>".into()));
                    }
                    seen_mpd = true;
                } else if depth == 2 {
                    if name == b"BaseURL" || name == b"ContentSteering" {
                        skipping = depth;
                        continue;
                    }
                    if !injected && name != b"ProgramInformation" {
                        inject(&mut writer, pathways, server_uri).map_err(|e| xml_err(&e))?;
                        injected = true;
                    }
                }
            }
            Event::Empty(e) => {
                if skipping > 0 {
                    continue;
                }
                let name = e.local_name();
                let name = name.as_ref();
                if depth == 0 {
                    return Err(ManifestError::NotMpd("an empty root element".into()));
                }
                if name == b"MPD" {
                    return Err(ManifestError::NotMpd("an <MPD> inside the <MPD>".into()));
                }
                if depth == 1 {
                    if name == b"BaseURL" || name == b"ContentSteering" {
                        continue;
                    }
                    if !injected && name != b"ProgramInformation" {
                        inject(&mut writer, pathways, server_uri).map_err(|e| xml_err(&e))?;
                        injected = true;
                    }
                }
            }
            Event::End(_) => {
                if skipping > 0 {
                    if depth == skipping {
                        skipping = 0;
                    }
                    depth = depth.saturating_sub(1);
                    continue;
                }
                if depth == 1 && !injected {
                    inject(&mut writer, pathways, server_uri).map_err(|e| xml_err(&e))?;
                    injected = true;
                }
                depth = depth.saturating_sub(1);
            }
            Event::Text(_) | Event::CData(_) | Event::Comment(_) | Event::GeneralRef(_) => {
                if skipping > 0 {
                    continue;
                }
                // Outside the root only whitespace and comments may stand.
                let blank = match &event {
                    Event::Text(t) => t.iter().all(u8::is_ascii_whitespace),
                    Event::Comment(_) => true,
                    _ => false,
                };
                if depth == 0 && !blank {
                    return Err(ManifestError::NotMpd("text outside the root".into()));
                }
            }
            Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
        }
        writer.write_event(event).map_err(|e| xml_err(&e))?;
    }
    if !seen_mpd || !injected || depth != 0 {
        return Err(ManifestError::NotMpd("no complete <MPD> element".into()));
    }
    String::from_utf8(writer.into_inner()).map_err(|e| xml_err(&e))
}

/// Writes the `<BaseURL>` per pathway and the `<ContentSteering>` element.
fn inject(
    w: &mut quick_xml::Writer<Vec<u8>>,
    pathways: &[Pathway],
    server_uri: &str,
) -> Result<(), quick_xml::Error> {
    let nl = || Event::Text(BytesText::new("\n  "));
    for p in pathways {
        let mut start = BytesStart::new("BaseURL");
        start.push_attribute(("serviceLocation", p.id.as_str()));
        w.write_event(Event::Start(start))?;
        w.write_event(Event::Text(BytesText::new(p.base.as_str())))?;
        w.write_event(Event::End(BytesEnd::new("BaseURL")))?;
        w.write_event(nl())?;
    }
    let mut start = BytesStart::new("ContentSteering");
    start.push_attribute(("defaultServiceLocation", pathways[0].id.as_str()));
    start.push_attribute(("queryBeforeStart", "true"));
    w.write_event(Event::Start(start))?;
    w.write_event(Event::Text(BytesText::new(server_uri)))?;
    w.write_event(Event::End(BytesEnd::new("ContentSteering")))?;
    w.write_event(nl())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pathways() -> Vec<Pathway> {
        ["edge-a", "edge-b"]
            .iter()
            .map(|id| Pathway {
                id: (*id).into(),
                base: url::Url::parse(&format!("https://{id}.example:8443/t/VE9L/v/movie/"))
                    .expect("url"),
            })
            .collect()
    }

    const MASTER: &str = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"audio\",NAME=\"und\",DEFAULT=YES,AUTOSELECT=YES,URI=\"audio/index.m3u8\"\n#EXT-X-STREAM-INF:BANDWIDTH=900000,CODECS=\"avc1.64001e,mp4a.40.2\",RESOLUTION=640x360,AUDIO=\"audio\"\n360p/index.m3u8\n#EXT-X-STREAM-INF:BANDWIDTH=500000,RESOLUTION=426x240,AUDIO=\"audio\"\n240p/index.m3u8\n#EXT-X-CONTENT-STEERING:SERVER-URI=\"https://old.example/s\"\n";

    const SERVER: &str = "https://steer.example/v1/steering/hls/movie?client=10.0.0.1";

    #[test]
    fn hls_variants_and_renditions_appear_once_per_pathway() {
        let out = steer_hls(MASTER, &pathways(), SERVER).expect("rewrite");
        let parsed = m3u8_rs::parse_master_playlist_res(out.as_bytes()).expect("parses again");
        assert_eq!(parsed.variants.len(), 4);
        assert_eq!(parsed.alternatives.len(), 2);
        for p in pathways() {
            let mine: Vec<_> = parsed
                .variants
                .iter()
                .filter(|v| {
                    v.other_attributes
                        .as_ref()
                        .and_then(|a| a.get("PATHWAY-ID"))
                        == Some(&QuotedOrUnquoted::Quoted(p.id.clone()))
                })
                .collect();
            assert_eq!(mine.len(), 2, "{out}");
            for v in &mine {
                assert!(v.uri.starts_with(p.base.as_str()), "{}", v.uri);
                let group = format!("audio.{}", p.id);
                assert_eq!(v.audio.as_deref(), Some(group.as_str()));
                let alt = parsed
                    .alternatives
                    .iter()
                    .find(|a| a.group_id == group)
                    .expect("its rendition group");
                assert_eq!(
                    alt.uri.as_deref(),
                    Some(format!("{}audio/index.m3u8", p.base).as_str())
                );
            }
        }
        assert_eq!(out.matches("#EXT-X-CONTENT-STEERING:").count(), 1, "{out}");
        assert!(out.contains(&format!(
            "#EXT-X-CONTENT-STEERING:SERVER-URI=\"{SERVER}\",PATHWAY-ID=\"edge-a\""
        )));
        assert!(!out.contains("old.example"));
        assert!(out.contains("https://edge-b.example:8443/t/VE9L/v/movie/240p/index.m3u8"));
    }

    #[test]
    fn hls_refuses_media_playlists_garbage_and_bad_pathways() {
        let media = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\nseg_1.m4s\n#EXT-X-ENDLIST\n";
        assert!(steer_hls(media, &pathways(), SERVER).is_err());
        assert!(steer_hls("hello", &pathways(), SERVER).is_err());
        assert_eq!(
            steer_hls(MASTER, &[], SERVER),
            Err(ManifestError::NoPathways)
        );
        let mut bad = pathways();
        bad[0].id = "a\"b".into();
        assert_eq!(
            steer_hls(MASTER, &bad, SERVER),
            Err(ManifestError::BadPathwayId)
        );
        assert!(steer_hls(MASTER, &pathways(), "https://x/\"y").is_err());
    }

    const MPD: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT4.000S" minBufferTime="PT2.000S">
  <BaseURL>https://old.example/</BaseURL>
  <Period id="0" start="PT0S">
    <AdaptationSet id="0" contentType="video" mimeType="video/mp4">
      <Representation id="360p" codecs="avc1.64001e" bandwidth="900000" width="640" height="360">
        <SegmentTemplate timescale="90000" initialization="360p/init.mp4" media="360p/seg_$Number%05d$.m4s" startNumber="1"/>
      </Representation>
    </AdaptationSet>
  </Period>
</MPD>
"#;

    #[test]
    fn dash_gets_one_base_url_per_pathway_and_a_content_steering_element() {
        let server = "https://steer.example/v1/steering/dash/movie?client=10.0.0.1&x=1";
        let out = steer_dash(MPD, &pathways(), server).expect("rewrite");
        assert!(!out.contains("old.example"), "{out}");
        assert!(out.contains(
            "<BaseURL serviceLocation=\"edge-a\">https://edge-a.example:8443/t/VE9L/v/movie/</BaseURL>"
        ), "{out}");
        assert!(
            out.contains("<BaseURL serviceLocation=\"edge-b\">"),
            "{out}"
        );
        assert!(out.contains(
            "<ContentSteering defaultServiceLocation=\"edge-a\" queryBeforeStart=\"true\">https://steer.example/v1/steering/dash/movie?client=10.0.0.1&amp;x=1</ContentSteering>"
        ), "{out}");
        // Injected before the Period, the rest untouched.
        let base = out.find("<BaseURL").expect("base");
        assert!(base < out.find("<Period").expect("period"));
        assert!(out.contains("media=\"360p/seg_$Number%05d$.m4s\""));
        assert!(out.starts_with("<?xml"));
        // The output is well-formed: every element closes.
        let mut r = quick_xml::Reader::from_str(&out);
        loop {
            match r.read_event() {
                Ok(Event::Eof) => break,
                Ok(_) => {}
                Err(e) => panic!("{e}: {out}"),
            }
        }
    }

    #[test]
    fn dash_refuses_what_is_not_an_mpd() {
        for bad in [
            "",
            "hello",
            "<MPD/>",
            "<html><body/></html>",
            "<MPD><Period>",
            "<MPD></MPD><MPD></MPD>",
            "<MPD></Period>",
            "<MPD><MPD><ContentSteering a=\"b\"/></MPD></MPD>",
            "<MPD><MPD/></MPD>",
        ] {
            assert!(steer_dash(bad, &pathways(), SERVER).is_err(), "{bad}");
        }
        assert!(steer_dash("<MPD></MPD>", &pathways(), SERVER).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        // Arbitrary bytes never panic either rewriter.
        #[test]
        fn arbitrary_input_never_panics(text in ".{0,400}") {
            let _ = steer_hls(&text, &pathways(), SERVER);
            let _ = steer_dash(&text, &pathways(), SERVER);
        }

        // Manifest-shaped noise: real tags and elements in random order and with random values.
        #[test]
        fn manifest_shaped_input_never_panics(
            lines in proptest::collection::vec(prop_oneof![
                Just("#EXTM3U".to_owned()),
                "#EXT-X-STREAM-INF:BANDWIDTH=[0-9]{1,7}(,AUDIO=\"[a-z\"]{0,4}\")?(,CLOSED-CAPTIONS=(NONE|\"cc\"))?",
                "#EXT-X-MEDIA:TYPE=(AUDIO|VIDEO|SUBTITLES|CLOSED-CAPTIONS),GROUP-ID=\"[a-z]{0,3}\",NAME=\"[a-z]{0,3}\"(,URI=\"[a-z/:.%]{0,12}\")?",
                "#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=[0-9]{1,4},URI=\"[a-z:/%]{0,10}\"",
                "[a-z0-9/:.%?#\\[\\]]{0,20}",
                "<MPD( x=\"[a-z&;<]{0,5}\")?>",
                Just("</MPD>".to_owned()),
                "<(BaseURL|ContentSteering|Period|ProgramInformation)( a=\"b\")?/?>",
                "</(BaseURL|ContentSteering|Period|ProgramInformation)>",
                "<!--[a-z-]{0,6}-->",
                "<!\\[CDATA\\[[a-z\\]]{0,6}\\]\\]>",
                "&[a-z#0-9]{0,5};?",
            ], 0..24)
        ) {
            let text = lines.join("\n");
            if let Ok(out) = steer_hls(&text, &pathways(), SERVER) {
                prop_assert!(out.contains("#EXT-X-CONTENT-STEERING:SERVER-URI="));
                let parsed = m3u8_rs::parse_master_playlist_res(out.as_bytes());
                prop_assert!(parsed.is_ok(), "{}", out);
            }
            if let Ok(out) = steer_dash(&text, &pathways(), SERVER) {
                prop_assert_eq!(out.matches("<ContentSteering ").count(), 1);
                prop_assert_eq!(out.matches("<BaseURL serviceLocation=").count(), 2);
            }
        }
    }
}

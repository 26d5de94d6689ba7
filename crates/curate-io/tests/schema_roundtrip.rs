//! Every table in `schemas/` survives a write → verify → read round trip
//! through a real parquet shard, with values of every column type,
//! nulls where the schema allows them.

use std::sync::Arc;

use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{
    Array, ArrayRef, BinaryArray, BooleanArray, FixedSizeListArray, Float64Array, Int64Array,
    LargeBinaryArray, ListArray, RecordBatch, StringArray,
};
use arrow_schema::{DataType, Field, Schema};
use curate_core::schema::{registry, ColumnType};
use curate_io::{read_shard, verify_shard, ShardOptions, ShardWriter};

const ROWS: usize = 7;

fn column(dt: &DataType, nullable: bool, seed: usize) -> ArrayRef {
    let valid = |i: usize| !nullable || (i + seed) % 3 != 0;
    let ints = Int64Array::from_iter(
        (0..ROWS).map(|i| valid(i).then_some(((i * 37 + seed) % 100) as i64)),
    );
    let floats = Float64Array::from_iter(
        (0..ROWS).map(|i| valid(i).then_some((i as f64 + seed as f64) * 0.25 - 1.0)),
    );
    let cast = |a: &dyn Array| arrow_cast::cast(a, dt).expect("castable");
    match dt {
        DataType::Boolean => Arc::new(BooleanArray::from_iter(
            (0..ROWS).map(|i| valid(i).then_some(i % 2 == 0)),
        )),
        DataType::Utf8 => Arc::new(StringArray::from_iter(
            (0..ROWS).map(|i| valid(i).then(|| format!("v{seed}-{i}-é"))),
        )),
        DataType::Binary => Arc::new(BinaryArray::from_iter(
            (0..ROWS).map(|i| valid(i).then(|| vec![i as u8; i + 1])),
        )),
        DataType::LargeBinary => Arc::new(LargeBinaryArray::from_iter(
            (0..ROWS).map(|i| valid(i).then(|| vec![i as u8; i + 2])),
        )),
        DataType::Float16 | DataType::Float32 | DataType::Float64 => cast(&floats),
        DataType::List(f) => {
            let l = ListArray::from_iter_primitive::<Float64Type, _, _>((0..ROWS).map(|i| {
                valid(i).then(|| (0..i % 4).map(|j| Some(j as f64 * 0.5)).collect::<Vec<_>>())
            }));
            let l = arrow_cast::cast(
                &l,
                &DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true))),
            )
            .unwrap();
            let _ = f;
            cast(&l)
        }
        DataType::FixedSizeList(f, n) => {
            let n = *n;
            let l = if matches!(
                f.data_type(),
                DataType::Float16 | DataType::Float32 | DataType::Float64
            ) {
                FixedSizeListArray::from_iter_primitive::<Float64Type, _, _>(
                    (0..ROWS).map(|i| {
                        valid(i).then(|| {
                            (0..n)
                                .map(|j| Some((i as i32 * n + j) as f64 * 0.125))
                                .collect::<Vec<_>>()
                        })
                    }),
                    n,
                )
            } else {
                FixedSizeListArray::from_iter_primitive::<Int64Type, _, _>(
                    (0..ROWS).map(|i| {
                        valid(i).then(|| {
                            (0..n)
                                .map(|j| Some((i as i32 * n + j) as i64))
                                .collect::<Vec<_>>()
                        })
                    }),
                    n,
                )
            };
            cast(&l)
        }
        _ => cast(&ints),
    }
}

#[test]
fn every_schema_round_trips_through_parquet() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(
        registry().len() >= 10,
        "expected every pipeline table, found {}",
        registry().len()
    );
    for table in registry() {
        // Every alternative of every field is exercised: one shard per alternative index.
        let max_alts = table
            .fields
            .iter()
            .map(|f| f.ty.alternatives().len())
            .max()
            .unwrap();
        for alt in 0..max_alts {
            let chosen: Vec<(&str, DataType)> = table
                .fields
                .iter()
                .map(|f| {
                    let alts = f.ty.alternatives();
                    let t = ColumnType::parse(alts[alt.min(alts.len() - 1)]).unwrap();
                    (f.name.as_str(), t.to_arrow(Some(3)).unwrap())
                })
                .collect();
            let schema: Arc<Schema> = Arc::new(table.arrow_schema_with(&chosen).unwrap());
            let columns: Vec<ArrayRef> = schema
                .fields()
                .iter()
                .enumerate()
                .map(|(i, f)| column(f.data_type(), f.is_nullable(), i))
                .collect();
            let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();

            let dest = tmp.path().join(format!("{}-{alt}.parquet", table.name));
            let tmp_path = tmp.path().join(format!(".{}-{alt}.tmp", table.name));
            let mut w = ShardWriter::create(
                table,
                schema.clone(),
                &tmp_path,
                &dest,
                &ShardOptions::default(),
            )
            .unwrap();
            w.write(&batch).unwrap();
            let (rows, bytes) = w.finish().unwrap();
            assert_eq!(rows, ROWS as u64);
            assert!(bytes > 0 && dest.exists() && !tmp_path.exists());

            assert_eq!(
                verify_shard(&dest, table, Some(ROWS as u64)).unwrap(),
                ROWS as u64
            );
            let back = read_shard(&dest, table).unwrap();
            let back = arrow_select_concat(&back);
            assert_eq!(back.num_rows(), ROWS);
            for (i, f) in schema.fields().iter().enumerate() {
                assert_eq!(
                    back.column(i).as_ref(),
                    batch.column(i).as_ref(),
                    "{} v{}: column `{}` ({}) changed in the round trip",
                    table.name,
                    table.version,
                    f.name(),
                    f.data_type()
                );
            }
        }
    }
}

fn arrow_select_concat(batches: &[RecordBatch]) -> RecordBatch {
    assert_eq!(
        batches.len(),
        1,
        "a {ROWS}-row shard reads back as one batch"
    );
    batches[0].clone()
}

#[test]
fn writer_refuses_batches_that_break_the_schema() {
    let table = curate_core::schema::get("exact_duplicates").unwrap();
    let schema = Arc::new(table.arrow_schema().unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let mut w = ShardWriter::create(
        table,
        schema.clone(),
        &tmp.path().join(".x.tmp"),
        &tmp.path().join("x.parquet"),
        &ShardOptions::default(),
    )
    .unwrap();
    // A null in a non-nullable column.
    let nullable = Arc::new(Schema::new_with_metadata(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
        schema.metadata().clone(),
    ));
    let batch = RecordBatch::try_new(
        nullable,
        vec![
            Arc::new(StringArray::from(vec![Some("a")])),
            Arc::new(StringArray::from(vec![None::<&str>])),
            Arc::new(StringArray::from(vec![Some("b")])),
        ],
    )
    .unwrap();
    let e = w.write(&batch).unwrap_err().to_string();
    assert!(
        e.contains("`sha256` holds nulls but is not nullable"),
        "{e}"
    );
}

#[test]
fn truncated_shard_fails_verification() {
    let table = curate_core::schema::get("exact_duplicates").unwrap();
    let schema = Arc::new(table.arrow_schema().unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("x.parquet");
    let batch = RecordBatch::try_new(
        schema.clone(),
        (0..3).map(|i| column(&DataType::Utf8, false, i)).collect(),
    )
    .unwrap();
    curate_io::write_table(table, &dest, &[batch], schema).unwrap();
    assert!(verify_shard(&dest, table, Some(ROWS as u64)).is_ok());
    let e = verify_shard(&dest, table, Some(ROWS as u64 + 1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("journal record says"), "{e}");
    let len = std::fs::metadata(&dest).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&dest).unwrap();
    f.set_len(len / 2).unwrap();
    let e = verify_shard(&dest, table, None).unwrap_err().to_string();
    assert!(e.contains("not a readable parquet shard"), "{e}");
    // A shard of another table is refused by name.
    let images = curate_core::schema::get("images").unwrap();
    std::fs::remove_file(&dest).unwrap();
    let batch = RecordBatch::try_new(
        Arc::new(table.arrow_schema().unwrap()),
        (0..3).map(|i| column(&DataType::Utf8, false, i)).collect(),
    )
    .unwrap();
    curate_io::write_table(
        table,
        &dest,
        &[batch],
        Arc::new(table.arrow_schema().unwrap()),
    )
    .unwrap();
    let e = verify_shard(&dest, images, None).unwrap_err().to_string();
    assert!(e.contains("table `exact_duplicates`"), "{e}");
}

//! Macros the server's modules share.

/// An enum stored as TEXT by its name: sqlx encodes and decodes it through the name (on
/// both backends, through the `Any` driver), serde writes the name, `FromStr` reads it.
macro_rules! text_enum {
    (
        $(#[$m:meta])*
        pub enum $name:ident ($what:literal) {
            $( $(#[$vm:meta])* $v:ident = $s:literal, )*
        }
    ) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vm])* $v, )*
        }

        impl $name {
            /// Every value, in order.
            pub const ALL: &'static [$name] = &[$($name::$v),*];

            /// The name stored and sent.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$v => $s, )*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = crate::error::Error;
            fn from_str(s: &str) -> crate::error::Result<$name> {
                match s {
                    $( $s => Ok($name::$v), )*
                    _ => Err(crate::error::Error::BadRequest(format!(
                        "{} {:?} is not one of {}",
                        $what,
                        s.chars().take(40).collect::<String>(),
                        [$($s),*].join(", ")
                    ))),
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl sqlx::Type<sqlx::Any> for $name {
            fn type_info() -> sqlx::any::AnyTypeInfo {
                <str as sqlx::Type<sqlx::Any>>::type_info()
            }
            fn compatible(ty: &sqlx::any::AnyTypeInfo) -> bool {
                <str as sqlx::Type<sqlx::Any>>::compatible(ty)
            }
        }

        impl<'q> sqlx::Encode<'q, sqlx::Any> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut <sqlx::Any as sqlx::Database>::ArgumentBuffer<'q>,
            ) -> std::result::Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<'q, sqlx::Any>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Any> for $name {
            fn decode(
                value: sqlx::any::AnyValueRef<'r>,
            ) -> std::result::Result<$name, sqlx::error::BoxDynError> {
                let text = <String as sqlx::Decode<'r, sqlx::Any>>::decode(value)?;
                Ok(text.parse::<$name>()?)
            }
        }
    };
}

//! A handler that also imports an interface the host does not offer (`test:secrets/vault`), so
//! it cannot be linked.

wit_bindgen::generate!({
    inline: "
        package test:secrets;
        interface vault {
            get-secret: func(name: string) -> string;
        }
        world sneaky {
            import vault;
            export handle: func() -> u32;
        }
    ",
});

struct Sneaky;

impl Guest for Sneaky {
    fn handle() -> u32 {
        test::secrets::vault::get_secret("aws").len() as u32
    }
}

export!(Sneaky);
